#include "unit/test_util.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "util/process.h"

namespace stagekit::testing {

namespace fs = std::filesystem;

namespace {
// Runs under test store their outputs in the build tree's cache, never in the
// user's ~/.cache/stagekit, also when ctest is run by hand.
const bool kTestCacheDir = [] {
  ::setenv("STAGEKIT_CACHE_DIR", STAGEKIT_TEST_CACHE_DIR, /*overwrite=*/0);
  return true;
}();
}  // namespace

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "stagekit-test-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void WriteFile(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out << content;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::vector<std::string> Temporaries(const fs::path& dir) {
  std::vector<std::string> found;
  for (const std::string& name : ListFiles(dir)) {
    if (name.find(".stagekit-tmp") != std::string::npos) found.push_back(name);
  }
  return found;
}

bool ProcessGone(long pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const std::size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
}

std::vector<std::string> ListFiles(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file()) out.push_back(fs::relative(it->path(), dir).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& stdin_data,
                         const fs::path& cwd) {
  std::vector<std::string> full = argv;
  if (!cwd.empty()) {
    // Run through env(1)'s sibling: a tiny shell keeps RunChild free of a cwd option.
    full = {"/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", cwd.string()};
    full.insert(full.end(), argv.begin(), argv.end());
  }
  util::ChildSpec spec;
  spec.argv = full;
  spec.stdin_data = stdin_data;
  spec.timeout = std::chrono::minutes(5);
  util::ChildResult r = util::RunChild(spec);
  if (!r.spawn_status.ok()) throw std::runtime_error(r.spawn_status.message());
  CommandResult out;
  out.exit_code = r.exited ? r.exit_code : -1;
  out.term_signal = r.term_signal;
  out.out = r.out;
  out.err = r.err;
  out.max_rss_kb = r.max_rss_kb;
  return out;
}

std::string Show(const CommandResult& r) {
  return "exit " + std::to_string(r.exit_code) + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

CommandResult RunCli(const std::vector<std::string>& args, const fs::path& cwd,
                     const std::string& stdin_data) {
  std::vector<std::string> argv = {STAGEKIT_CLI};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, stdin_data, cwd);
}

}  // namespace stagekit::testing
