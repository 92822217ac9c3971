// test/fuzz/fuzz_input.c: see fuzz_input.h.
#include "fuzz_input.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

// The memory file, made on the first input and truncated for each next one.
static int input_fd = -1;
static char input_path[64];

static void fail(const char *what) {
    perror(what);
    exit(2);
}

const char *fuzz_input_path(const uint8_t *data, size_t size) {
    if (input_fd < 0) {
        input_fd = memfd_create("fuzz_input", 0);
        if (input_fd < 0) fail("fuzz_input: memfd_create");
        snprintf(input_path, sizeof input_path, "/proc/self/fd/%d", input_fd);
    }
    if (ftruncate(input_fd, 0) != 0) fail("fuzz_input: ftruncate");
    for (size_t done = 0; done < size;) {
        ssize_t wrote = pwrite(input_fd, data + done, size - done, (off_t)done);
        if (wrote <= 0) fail("fuzz_input: pwrite");
        done += (size_t)wrote;
    }
    return input_path;
}
