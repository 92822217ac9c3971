// merging/svd.h: the truncated singular value decomposition that the svd merge
// methods re-factor a merged delta with, M ~ U_r S_r V_r^T, written here (no
// LAPACK). M comes as a product M = P Q (P [m, k], Q [k, n]), so that a
// low-rank delta (a sum of LoRA products B A, k = the sum of their ranks)
// costs k^3, not n^3; a dense M is P = M, Q = I (or P = I, Q = M).
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// The largest number of sweeps of Jacobi rotations before svd_truncated gives up.
#define SVD_MAX_SWEEPS 60

// The top `rank` singular triplets of M = P Q (row-major, doubles):
//   US [m, rank] = U_r diag(S_r)   (peft's lora_B)
//   Vt [rank, n] = V_r^T           (peft's lora_A)
// so that US Vt is the best rank-`rank` approximation of M (Eckart-Young).
// rank <= k and rank <= min(m, n). *energy_kept = sum_{i<rank} S_i^2 / ||M||_F^2
// (1 for M = 0). Singular vectors are unique only up to sign: compare
// products, not factors. Returns 0, or -1 when out of memory or when the
// rotations did not converge in SVD_MAX_SWEEPS sweeps.
int svd_truncated(const double *P, const double *Q, int m, int k, int n, int rank, double *US, double *Vt,
                  double *energy_kept);

// The eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations:
// A [n, n] (destroyed) = W diag(lambda) W^T, the eigenvalues in lambda sorted
// from largest to smallest, the eigenvector of lambda[j] in column j of
// W [n, n]. Returns 0, or -1 when it did not converge in SVD_MAX_SWEEPS sweeps.
int symmetric_eigen(double *A, int n, double *lambda, double *W);

#ifdef __cplusplus
}
#endif
