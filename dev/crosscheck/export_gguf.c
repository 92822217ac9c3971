// export_gguf.c: a model written as GGUF by our exporter, without training,
// for dev/crosscheck/check_gguf_export.py (./train --merge-gguf writes the
// merged model through the same gguf_write_model):
//   build/export_gguf MODEL OUT.gguf [f16|bf16|q8_0]
#include "infer/gguf_export.h"
#include "model.h"

#include <stdio.h>

int main(int argc, char **argv) {
    DType type = DT_F16;
    if ((argc != 3 && argc != 4) || (argc == 4 && gguf_export_type_from_name(argv[3], &type) != 0)) {
        fprintf(stderr, "usage: %s MODEL OUT.gguf [f16|bf16|q8_0]\n", argv[0]);
        return 2;
    }
    char err[1024];
    Model m;
    if (model_load(&m, argv[1], err, sizeof err) != 0) { fprintf(stderr, "export_gguf: %s\n", err); return 1; }
    int status = gguf_write_model(&m, argv[2], type, err, sizeof err);
    if (status != 0) fprintf(stderr, "export_gguf: %s\n", err);
    else printf("export_gguf: %s written as %s (%s)\n", argv[1], argv[2], gguf_export_type_name(type));
    model_free(&m);
    return status != 0;
}
