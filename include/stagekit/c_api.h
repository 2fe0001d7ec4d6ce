/* The C ABI of the invocation entry point.
 *
 * Code compiled against a different C++ standard library ABI (the Ray bridge
 * uses _GLIBCXX_USE_CXX11_ABI=0) reaches stagekit only through these
 * functions: plain bytes in, plain bytes out, no C++ types across the line.
 * Every returned buffer is allocated by stagekit and released with
 * stagekit_free().
 */
#ifndef STAGEKIT_C_API_H_
#define STAGEKIT_C_API_H_

#include <stddef.h>
#include "stagekit/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Runs one stage. `request` is the StageRequest JSON. On return *out holds
 * RunStats JSON (result 0) or {"error":{"code":..,"message":..}} (non-zero
 * result, equal to the stagekit::Code / exit code). Never throws. */
STAGEKIT_API int stagekit_invoke_json(const char* request, size_t request_len, char** out,
                                      size_t* out_len);

/* stagekit_invoke_json() with warm stage instances on (warm != 0: reuse this
 * process's instance, the default) or off (set up and tear down for this call
 * only, the cold baseline), whatever STAGEKIT_WARM says. */
STAGEKIT_API int stagekit_invoke_json_warm(const char* request, size_t request_len, int warm,
                                           char** out, size_t* out_len);

/* Loads a stage library into the global registry. 0 on success; otherwise the
 * error JSON is returned in *out as above. */
STAGEKIT_API int stagekit_load_library(const char* path, char** out, size_t* out_len);

/* Releases a buffer returned by the functions above. NULL is allowed. */
STAGEKIT_API void stagekit_free(char* buffer);

/* Non-zero once stagekit::RequestInterrupt() was called (Ctrl-C in the CLI). */
STAGEKIT_API int stagekit_interrupted(void);

/* Lower-case hex SHA-256 of `len` bytes into out[0..64] (NUL-terminated). */
STAGEKIT_API void stagekit_sha256_hex(const char* data, size_t len, char out[65]);

/* Writes `len` bytes as the file `path` the way every executor publishes an
 * output: into an unpredictable, exclusively created temporary beside it,
 * renamed over `path` only when complete; an existing `path` that is not a
 * regular file is never replaced. 0 on success; otherwise the stagekit::Code
 * and, in *out, the error JSON as above. */
STAGEKIT_API int stagekit_write_output(const char* path, const char* data, size_t len, char** out,
                                       size_t* out_len);

/* The same, written piece by piece (an output fetched in windows): begin
 * creates the temporary and returns a handle (NULL on error, with the error
 * JSON in *out); append writes and hashes; commit checks that the bytes hash
 * to `expected_digest` ("sha256:<hex>"), then renames them over the path, or
 * fails and removes them; abort removes them. commit and abort free the
 * handle. Return values as stagekit_write_output. */
typedef struct stagekit_output stagekit_output;
STAGEKIT_API stagekit_output* stagekit_output_begin(const char* path, char** out, size_t* out_len);
STAGEKIT_API int stagekit_output_append(stagekit_output* handle, const char* data, size_t len,
                                        char** out, size_t* out_len);
STAGEKIT_API int stagekit_output_commit(stagekit_output* handle, const char* expected_digest,
                                        char** out, size_t* out_len);
STAGEKIT_API void stagekit_output_abort(stagekit_output* handle);

/* "MAJOR.MINOR.PATCH" of the stagekit library. */
STAGEKIT_API const char* stagekit_version(void);

#ifdef __cplusplus
}
#endif

#endif /* STAGEKIT_C_API_H_ */
