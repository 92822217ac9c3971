// test/fuzz/fuzz_safetensors.c: a safetensors file (formats/safetensors.c:
// the header length, the JSON header, every tensor's dtype, shape and data
// offsets), then every tensor read through to fp32, so that a size or offset
// the checks let through reads outside the mapping under ASan.
#include "fuzz_input.h"
#include "formats/safetensors.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_input_path(data, size);
    char err[512];
    SafetensorsFile f;
    if (safetensors_open(&f, path, err, sizeof err) != 0) return 0;
    for (int i = 0; i < f.tensors.count; i++) {
        const TensorInfo *t = &f.tensors.tensors[i];
        int64_t n = tensor_numel(t);
        float *values = (float *)malloc(sizeof(float) * (size_t)(n ? n : 1));
        if (values) tensor_to_f32(t->dtype, t->data, values, n);
        free(values);
    }
    safetensors_close(&f);
    return 0;
}
