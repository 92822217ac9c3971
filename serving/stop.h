// serving/stop.h: the request's "stop" sequences in generated text. The text
// ends before the first one that occurs (OpenAI leaves the stop sequence
// out); while streaming, bytes that may be the start of one are held back.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Looks for stops[0..n_stops) in text[0..len), starting at byte `from` (the
// caller's earlier search covered what lies before from - longest stop + 1).
// Returns where the first occurrence starts, or -1 when none occurs; then
// *safe_len is how many bytes may be sent: len minus the longest tail that
// is a prefix of a stop sequence.
long stop_find(const char *text, size_t len, size_t from, char *const *stops, int n_stops, size_t *safe_len);

#ifdef __cplusplus
}
#endif
