// Locations of an installation's pieces. Internal.
#ifndef STAGEKIT_SRC_PATHS_H_
#define STAGEKIT_SRC_PATHS_H_

#include <filesystem>

namespace stagekit::internal {

// The directory holding libstagekit.so, and the file it was loaded from (by
// its soname, libstagekit.so.N, when the loader found it through a binary).
std::filesystem::path LibraryDir();
std::filesystem::path LibraryPath();
// The full stagekit command line for child processes that need it (the Ray
// head's reaper, the binary a package ships): the current executable when it
// is stagekit, the one installed beside this library, else `stagekit` from
// PATH.
std::filesystem::path DefaultCli();
// The stage runner the subprocess executor starts: $STAGEKIT_RUNNER; else the
// lean `stagekit-stage` beside the current executable or installed beside
// this library; else DefaultCli() (whose `stage` subcommand speaks the same
// protocol, at the start-up cost of the whole command line).
std::filesystem::path DefaultRunner();

}  // namespace stagekit::internal

#endif  // STAGEKIT_SRC_PATHS_H_
