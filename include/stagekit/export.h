/* What libstagekit exports: the public API, marked STAGEKIT_API, and nothing
 * else. The library is built with hidden visibility (CMakeLists.txt), so a
 * declaration without the mark is internal to it, and the helpers it links
 * statically (src/util) are not exported either. C as well as C++ (c_api.h). */
#ifndef STAGEKIT_EXPORT_H_
#define STAGEKIT_EXPORT_H_

#if defined(__cplusplus)
#define STAGEKIT_API [[gnu::visibility("default")]]
#else
#define STAGEKIT_API __attribute__((visibility("default")))
#endif

#endif /* STAGEKIT_EXPORT_H_ */
