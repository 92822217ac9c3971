// test/fuzz/fuzz_input.h: the fuzzer's bytes as a file that a parser taking a
// path can open. The file lives in memory (memfd_create), one per process,
// rewritten for every input: nothing touches the disk.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// A path ("/proc/self/fd/N") whose contents are now exactly data[0, size).
// Exits the fuzzer with a message when the memory file cannot be made.
const char *fuzz_input_path(const uint8_t *data, size_t size);

#ifdef __cplusplus
}
#endif
