// formats/atomic_file.h: every file the programs write goes through here, so
// that a crash, a kill or a full disk leaves either the old file or the new
// one, never a mix. The contents go to PATH.tmp.PID; atomic_file_commit
// flushes and fsyncs them, renames the temp over PATH and fsyncs the folder
// (so that the new name is durable too). On any failure the temp is removed,
// the old PATH is left as it was, and err says "PATH: what failed: why".
//
// A set of files that belong together (./prepare's train.bin, val.bin and
// report.json) is written as: every temp written and closed
// (atomic_file_close), then every one renamed (atomic_file_rename).
#pragma once
#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

// The longest path a file written here may have (a longer one is an error).
#define ATOMIC_FILE_PATH_MAX 4096

typedef struct {
    FILE *f;                                   // the temp, open for writing; NULL once closed
    char path[ATOMIC_FILE_PATH_MAX];           // the file the temp becomes
    char temp_path[ATOMIC_FILE_PATH_MAX + 32]; // PATH.tmp.PID
} AtomicFile;

// Opens PATH.tmp.PID for writing (binary). Returns a->f, or NULL with the message in err.
FILE *atomic_file_open(AtomicFile *a, const char *path, char *err, size_t err_size);
// Flushes, fsyncs and closes the temp; a write error seen by any earlier
// fwrite/fprintf counts. Returns 0, or -1 (temp removed) with the message in err.
int atomic_file_close(AtomicFile *a, char *err, size_t err_size);
// Renames the closed temp over PATH and fsyncs PATH's folder. Returns 0, or
// -1 (temp removed) with the message in err.
int atomic_file_rename(AtomicFile *a, char *err, size_t err_size);
// atomic_file_close, then atomic_file_rename: the usual way to finish a file.
int atomic_file_commit(AtomicFile *a, char *err, size_t err_size);
// Gives up on the file: the temp closed (when open) and removed; PATH untouched.
void atomic_file_abort(AtomicFile *a);
// The temps of path that processes left behind (a kill before their rename):
// the paths PATH.tmp.PID in path's folder, malloc'd, in *temps (free each and
// the array). Returns their count, or -1 when the folder cannot be read.
int atomic_file_find_temps(const char *path, char ***temps);
// A whole file from one buffer: open, write, commit.
int atomic_file_write(const char *path, const void *data, size_t bytes, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif
