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

/* The codes the library reports (stagekit::Code in status.h takes its values
 * from here), which are also the `stagekit` command's exit codes. The command
 * line adds its own outcomes (10 and 13 to 18) to these; docs/exit-codes.md
 * lists them all. */
enum stagekit_code {
  STAGEKIT_OK = 0,
  STAGEKIT_STAGE_FAILED = 1,     /* the stage threw, wrote no output, or its process died */
  STAGEKIT_USAGE = 2,            /* bad command line */
  STAGEKIT_INVALID_PIPELINE = 3, /* malformed pipeline file, cycle, duplicate names */
  STAGEKIT_UNKNOWN_STAGE = 4,    /* no registered stage has that name */
  STAGEKIT_INPUT_ERROR = 5,      /* an input file is missing or unreadable */
  STAGEKIT_BAD_REQUEST = 6,      /* a malformed request (JSON) reached the entry point */
  STAGEKIT_OUTPUT_ERROR = 7,     /* the output location cannot be written */
  STAGEKIT_TIMEOUT = 8,          /* the stage ran past its timeout and was stopped */
  STAGEKIT_LIBRARY_ERROR = 9,    /* a stage library failed to load or registers duplicates */
  STAGEKIT_INFEASIBLE = 11,      /* no node of the cluster can ever provide a stage's resources */
  STAGEKIT_RAY_UNAVAILABLE = 12, /* Ray is missing, or the cluster or its dashboard unreachable */
  STAGEKIT_INTERNAL = 70,        /* a bug in stagekit itself */
  STAGEKIT_INTERRUPTED = 130     /* Ctrl-C, SIGTERM or SIGHUP */
};

/* `static inline` where the language has it (C99, C++), GNU C's __inline__ in C89. */
#if defined(__cplusplus) || (defined(__STDC_VERSION__) && __STDC_VERSION__ >= 199901L)
#define STAGEKIT_STATIC_INLINE static inline
#elif defined(__GNUC__)
#define STAGEKIT_STATIC_INLINE static __inline__
#else
#define STAGEKIT_STATIC_INLINE static
#endif

/* The stable lower_snake_case name of a library code, used on the wire
 * ({"error": {"code": "timeout", ...}}); NULL for any other value (a
 * command line outcome or no code at all), so callers can tell. */
STAGEKIT_STATIC_INLINE const char* stagekit_code_name(int code) {
  switch (code) {
    case STAGEKIT_OK:
      return "ok";
    case STAGEKIT_STAGE_FAILED:
      return "stage_failed";
    case STAGEKIT_USAGE:
      return "usage";
    case STAGEKIT_INVALID_PIPELINE:
      return "invalid_pipeline";
    case STAGEKIT_UNKNOWN_STAGE:
      return "unknown_stage";
    case STAGEKIT_INPUT_ERROR:
      return "input_error";
    case STAGEKIT_BAD_REQUEST:
      return "bad_request";
    case STAGEKIT_OUTPUT_ERROR:
      return "output_error";
    case STAGEKIT_TIMEOUT:
      return "timeout";
    case STAGEKIT_LIBRARY_ERROR:
      return "library_error";
    case STAGEKIT_INFEASIBLE:
      return "infeasible";
    case STAGEKIT_RAY_UNAVAILABLE:
      return "ray_unavailable";
    case STAGEKIT_INTERNAL:
      return "internal";
    case STAGEKIT_INTERRUPTED:
      return "interrupted";
    default:
      return NULL;
  }
}

/* Runs one stage. `request` is the StageRequest JSON. On return *out holds
 * RunStats JSON (result 0) or {"error":{"code":..,"message":..}} (non-zero
 * result, equal to the stagekit::Code / exit code). Never throws. Warm stage
 * instances are on, as with stagekit_invoke_json_warm(..., 1, ...). */
STAGEKIT_API int stagekit_invoke_json(const char* request, size_t request_len, char** out,
                                      size_t* out_len);

/* stagekit_invoke_json() with warm stage instances on (warm != 0: reuse this
 * process's instance, the default) or off (set up and tear down for this call
 * only, the cold baseline). The library reads no environment for this. */
STAGEKIT_API int stagekit_invoke_json_warm(const char* request, size_t request_len, int warm,
                                           char** out, size_t* out_len);

/* Loads a stage library into the global registry. 0 on success; otherwise the
 * error JSON is returned in *out as above. */
STAGEKIT_API int stagekit_load_library(const char* path, char** out, size_t* out_len);

/* Releases a buffer returned by the functions above. NULL is allowed. */
STAGEKIT_API void stagekit_free(char* buffer);

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
