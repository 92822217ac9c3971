// formats/atomic_file.c: temp + fsync + rename (see formats/atomic_file.h).
#include "formats/atomic_file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

FILE *atomic_file_open(AtomicFile *a, const char *path, char *err, size_t err_size) {
    memset(a, 0, sizeof *a);
    if (strlen(path) >= sizeof a->path) {
        snprintf(err, err_size, "%s: path too long", path);
        return NULL;
    }
    strcpy(a->path, path);
    snprintf(a->temp_path, sizeof a->temp_path, "%s.tmp.%ld", path, (long)getpid());
    a->f = fopen(a->temp_path, "wb");
    if (!a->f) snprintf(err, err_size, "%s: cannot create %s: %s", path, a->temp_path, strerror(errno));
    return a->f;
}

int atomic_file_close(AtomicFile *a, char *err, size_t err_size) {
    // an earlier fwrite that failed set the error flag; flushing what is still
    // buffered usually fails again and sets errno to the reason (ENOSPC)
    int write_failed = ferror(a->f);
    errno = 0;
    int failed = fflush(a->f) != 0;
    // the reason of an earlier failed write is lost unless the flush fails again: then say "write error"
    if (!failed && write_failed) failed = 1;
    else if (!failed) failed = fsync(fileno(a->f)) != 0;
    int saved_errno = errno;
    if (fclose(a->f) != 0 && !failed) {
        failed = 1;
        saved_errno = errno;
    }
    a->f = NULL;
    if (!failed) return 0;
    snprintf(err, err_size, "%s: cannot write: %s (the previous file, if any, is untouched)", a->path,
             saved_errno ? strerror(saved_errno) : "write error (disk full?)");
    remove(a->temp_path);
    return -1;
}

// Makes a rename in path's folder durable. Some file systems refuse fsync on
// a folder: that is not an error (the rename itself has happened).
static void sync_parent_dir(const char *path) {
    char dir[ATOMIC_FILE_PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path) + 1, path);
    else strcpy(dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return;
    fsync(fd);
    close(fd);
}

int atomic_file_rename(AtomicFile *a, char *err, size_t err_size) {
    if (rename(a->temp_path, a->path) != 0) {
        snprintf(err, err_size, "%s: cannot rename %s over it: %s (the previous file, if any, is untouched)", a->path,
                 a->temp_path, strerror(errno));
        remove(a->temp_path);
        return -1;
    }
    sync_parent_dir(a->path);
    return 0;
}

int atomic_file_commit(AtomicFile *a, char *err, size_t err_size) {
    if (atomic_file_close(a, err, err_size) != 0) return -1;
    return atomic_file_rename(a, err, err_size);
}

void atomic_file_abort(AtomicFile *a) {
    if (a->f) fclose(a->f);
    a->f = NULL;
    remove(a->temp_path);
}

int atomic_file_write(const char *path, const void *data, size_t bytes, char *err, size_t err_size) {
    AtomicFile a;
    if (!atomic_file_open(&a, path, err, err_size)) return -1;
    if (bytes > 0) fwrite(data, 1, bytes, a.f);   // a short write sets ferror: commit reports it
    return atomic_file_commit(&a, err, err_size);
}

int atomic_file_find_temps(const char *path, char ***temps) {
    char dir[ATOMIC_FILE_PATH_MAX], prefix[ATOMIC_FILE_PATH_MAX + 8];
    const char *slash = strrchr(path, '/'), *name = slash ? slash + 1 : path;
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + 1 : 1, slash ? path : ".");
    snprintf(prefix, sizeof prefix, "%s.tmp.", name);
    *temps = NULL;
    DIR *d = opendir(dir);
    if (!d) return -1;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        if (strncmp(entry->d_name, prefix, strlen(prefix)) != 0) continue;
        char **bigger = (char **)realloc(*temps, sizeof(char *) * (size_t)(count + 1));
        if (!bigger) break;
        *temps = bigger;
        size_t bytes = strlen(dir) + strlen(entry->d_name) + 2;
        (*temps)[count] = (char *)malloc(bytes);
        if (!(*temps)[count]) break;
        snprintf((*temps)[count], bytes, "%s%s%s", dir, slash ? "" : "/", entry->d_name);
        count++;
    }
    closedir(d);
    return count;
}
