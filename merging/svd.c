// merging/svd.c: the truncated SVD of M = P Q (see merging/svd.h) in three steps:
//   1. Q^T = Z T: an orthonormal basis of Q's rows (Gram-Schmidt, twice for
//      accuracy), so M = P T^T Z^T = K Z^T with K = P T^T [m, k];
//   2. K^T K = W diag(lambda) W^T by cyclic Jacobi rotations;
//   3. M = (K W)(Z W)^T, where K W's columns are orthogonal with norms
//      sqrt(lambda) = the singular values: U S = K W, V = Z W. Keep the top ones.
#include "merging/svd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// A row of Q whose part outside the earlier rows' span is smaller than this,
// relative to the row's norm, adds no direction (it is a combination of them).
#define SVD_DEPENDENT_ROW 1e-12
// The rotations stop when the off-diagonal mass is this small relative to the whole.
#define SVD_OFF_DIAGONAL_TOLERANCE 1e-15

static double dot(const double *x, const double *y, int n) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += x[i] * y[i];
    return sum;
}

// sqrt(sum_{p != q} A_pq^2) and sqrt(sum A_pq^2) of A [n, n].
static void off_diagonal_norm(const double *A, int n, double *off, double *all) {
    double off_sum = 0.0, all_sum = 0.0;
    for (int p = 0; p < n; p++)
        for (int q = 0; q < n; q++) {
            double a2 = A[(size_t)p * n + q] * A[(size_t)p * n + q];
            all_sum += a2;
            if (p != q) off_sum += a2;
        }
    *off = sqrt(off_sum);
    *all = sqrt(all_sum);
}

// A <- J^T A J and W <- W J for the rotation J in the (p, q) plane that zeroes A_pq:
//   tau = (A_qq - A_pp) / (2 A_pq),  t = sign(tau) / (|tau| + sqrt(1 + tau^2)),  c = 1 / sqrt(1 + t^2),  s = t c
// (Golub and Van Loan, "Matrix Computations", section 8.5).
static void rotate(double *A, double *W, int n, int p, int q) {
    double apq = A[(size_t)p * n + q];
    if (apq == 0.0) return;
    double tau = (A[(size_t)q * n + q] - A[(size_t)p * n + p]) / (2.0 * apq);
    double t = (tau >= 0 ? 1.0 : -1.0) / (fabs(tau) + sqrt(1.0 + tau * tau));
    double c = 1.0 / sqrt(1.0 + t * t), s = t * c;
    for (int k = 0; k < n; k++) {   // columns p and q: A J
        double akp = A[(size_t)k * n + p], akq = A[(size_t)k * n + q];
        A[(size_t)k * n + p] = c * akp - s * akq;
        A[(size_t)k * n + q] = s * akp + c * akq;
    }
    for (int k = 0; k < n; k++) {   // rows p and q: J^T (A J)
        double apk = A[(size_t)p * n + k], aqk = A[(size_t)q * n + k];
        A[(size_t)p * n + k] = c * apk - s * aqk;
        A[(size_t)q * n + k] = s * apk + c * aqk;
    }
    for (int k = 0; k < n; k++) {   // the eigenvectors: W J
        double wkp = W[(size_t)k * n + p], wkq = W[(size_t)k * n + q];
        W[(size_t)k * n + p] = c * wkp - s * wkq;
        W[(size_t)k * n + q] = s * wkp + c * wkq;
    }
}

// Orders the eigenvalues from largest to smallest, their columns of W with them.
static void sort_descending(double *lambda, double *W, int n) {
    for (int i = 0; i < n; i++) {
        int largest = i;
        for (int j = i + 1; j < n; j++)
            if (lambda[j] > lambda[largest]) largest = j;
        if (largest == i) continue;
        double swap = lambda[i];
        lambda[i] = lambda[largest];
        lambda[largest] = swap;
        for (int k = 0; k < n; k++) {
            swap = W[(size_t)k * n + i];
            W[(size_t)k * n + i] = W[(size_t)k * n + largest];
            W[(size_t)k * n + largest] = swap;
        }
    }
}

int symmetric_eigen(double *A, int n, double *lambda, double *W) {
    memset(W, 0, sizeof(double) * (size_t)n * n);
    for (int i = 0; i < n; i++) W[(size_t)i * n + i] = 1.0;
    int converged = 0;
    for (int sweep = 0; sweep < SVD_MAX_SWEEPS && !converged; sweep++) {
        double off, all;
        off_diagonal_norm(A, n, &off, &all);
        converged = off <= SVD_OFF_DIAGONAL_TOLERANCE * all;
        for (int p = 0; p < n && !converged; p++)
            for (int q = p + 1; q < n; q++) rotate(A, W, n, p, q);
    }
    for (int i = 0; i < n; i++) lambda[i] = A[(size_t)i * n + i];
    sort_descending(lambda, W, n);
    return converged ? 0 : -1;
}

// Step 1: the rows z_j of Z [k, n] and the upper-triangular T [k, k] with
// Q[j] = sum_{i<=j} T[i][j] z_i (modified Gram-Schmidt, each row orthogonalized
// twice). A row that adds no direction gets z_j = 0 and T[j][j] = 0.
static void orthonormal_rows(const double *Q, int k, int n, double *Z, double *T) {
    memset(T, 0, sizeof(double) * (size_t)k * k);
    for (int j = 0; j < k; j++) {
        double *z = &Z[(size_t)j * n];
        memcpy(z, &Q[(size_t)j * n], sizeof(double) * (size_t)n);
        double row_norm = sqrt(dot(z, z, n));
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < j; i++) {
                const double *zi = &Z[(size_t)i * n];
                double r = dot(zi, z, n);
                T[(size_t)i * k + j] += r;
                for (int c = 0; c < n; c++) z[c] -= r * zi[c];
            }
        double norm = sqrt(dot(z, z, n));
        if (norm <= SVD_DEPENDENT_ROW * row_norm || norm == 0.0) {
            memset(z, 0, sizeof(double) * (size_t)n);
            continue;
        }
        T[(size_t)j * k + j] = norm;
        for (int c = 0; c < n; c++) z[c] /= norm;
    }
}

int svd_truncated(const double *P, const double *Q, int m, int k, int n, int rank, double *US, double *Vt,
                  double *energy_kept) {
    if (rank < 1 || rank > k || rank > m || rank > n) return -1;
    double *Z = malloc(sizeof(double) * (size_t)k * n), *T = malloc(sizeof(double) * (size_t)k * k);
    double *K = malloc(sizeof(double) * (size_t)m * k), *G = malloc(sizeof(double) * (size_t)k * k);
    double *W = malloc(sizeof(double) * (size_t)k * k), *lambda = malloc(sizeof(double) * (size_t)k);
    int status = -1;
    if (Z && T && K && G && W && lambda) {
        orthonormal_rows(Q, k, n, Z, T);
        // K[a][i] = sum_j P[a][j] T[i][j]   (K = P T^T)
        for (int a = 0; a < m; a++)
            for (int i = 0; i < k; i++) K[(size_t)a * k + i] = dot(&P[(size_t)a * k], &T[(size_t)i * k], k);
        // G = K^T K
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++) {
                double sum = 0.0;
                for (int a = 0; a < m; a++) sum += K[(size_t)a * k + i] * K[(size_t)a * k + j];
                G[(size_t)i * k + j] = sum;
            }
        status = symmetric_eigen(G, k, lambda, W);
        // US[a][r] = sum_i K[a][i] W[i][r];  Vt[r][c] = sum_i W[i][r] Z[i][c]
        for (int a = 0; a < m; a++)
            for (int r = 0; r < rank; r++) {
                double sum = 0.0;
                for (int i = 0; i < k; i++) sum += K[(size_t)a * k + i] * W[(size_t)i * k + r];
                US[(size_t)a * rank + r] = sum;
            }
        for (int r = 0; r < rank; r++)
            for (int c = 0; c < n; c++) {
                double sum = 0.0;
                for (int i = 0; i < k; i++) sum += W[(size_t)i * k + r] * Z[(size_t)i * n + c];
                Vt[(size_t)r * n + c] = sum;
            }
        // energy kept = sum_{r<rank} S_r^2 / sum S^2, with S^2 = lambda (>= 0 up to rounding)
        double kept = 0.0, total = 0.0;
        for (int i = 0; i < k; i++) {
            double s2 = lambda[i] > 0 ? lambda[i] : 0.0;
            total += s2;
            if (i < rank) kept += s2;
        }
        *energy_kept = total > 0 ? kept / total : 1.0;
    }
    free(Z);
    free(T);
    free(K);
    free(G);
    free(W);
    free(lambda);
    return status;
}
