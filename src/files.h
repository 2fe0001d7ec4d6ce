// Writing files so that readers see the old file or the new one, never a
// part. Internal to stagekit (the cache, the CLI and its tools use it).
#ifndef STAGEKIT_SRC_FILES_H_
#define STAGEKIT_SRC_FILES_H_

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

#include "stagekit/status.h"

namespace stagekit::internal {

// A name beside `target` that no other writer (process, thread or host) uses
// at the same time: ".<name>.tmp-<host>-<pid>-<salt>-<n>".
std::filesystem::path UniqueTemp(const std::filesystem::path& target);
// Whether a file name is one UniqueTemp() made (left by an interrupted writer).
bool IsTempName(const std::string& name);
// write(2) until everything is written; kOutputError naming `path`.
Status WriteAllFd(int fd, const char* data, std::size_t size, const std::filesystem::path& path);
// Writes `text` to a UniqueTemp() beside `path` and renames it over `path`;
// on failure the temporary is removed and an earlier `path` is untouched.
Status WriteFileAtomically(const std::filesystem::path& path, std::string_view text);

}  // namespace stagekit::internal

#endif  // STAGEKIT_SRC_FILES_H_
