#include "deploy/s3.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "deploy/package.h"
#include "stagekit/executor.h"
#include "util/files.h"
#include "util/process.h"

namespace fs = std::filesystem;

namespace stagekit::deploy {
namespace {

std::vector<std::string> AwsArgs(const S3Options& options, std::vector<std::string> args) {
  std::vector<std::string> argv = {options.aws};
  argv.insert(argv.end(), args.begin(), args.end());
  if (!options.endpoint_url.empty()) {
    argv.push_back("--endpoint-url");
    argv.push_back(options.endpoint_url);
  }
  return argv;
}

// Runs the CLI; on failure, its last lines and what to do.
Status RunAws(const std::vector<std::string>& argv, Code code, const std::string& what) {
  util::ChildSpec spec;
  spec.argv = argv;
  spec.cancelled = util::Interrupted;
  util::ChildResult r = util::RunChild(spec);
  if (!r.spawn_status.ok()) {
    return Status(code, what + ": cannot run `" + argv[0] +
                            "` (install the AWS CLI: apt-get install awscli, or set STAGEKIT_AWS)");
  }
  if (r.interrupted) return Status(Code::kInterrupted, what + ": interrupted");
  if (!r.exited || r.exit_code != 0) {
    std::string err = r.err.empty() ? r.out : r.err;
    while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
    return Status(code, what + " failed (aws exit " + std::to_string(r.exit_code) +
                            "): " + util::Tail(err, 1500));
  }
  return OkStatus();
}

}  // namespace

S3Options S3OptionsFromEnvironment(const std::string& endpoint_flag) {
  S3Options options;
  options.endpoint_url = endpoint_flag;
  for (const char* name : {"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"}) {
    if (!options.endpoint_url.empty()) break;
    if (const char* env = std::getenv(name); env != nullptr) options.endpoint_url = env;
  }
  if (const char* aws = std::getenv("STAGEKIT_AWS"); aws != nullptr && *aws) options.aws = aws;
  return options;
}

Status CheckS3Uri(const std::string& uri) {
  if (uri.rfind("s3://", 0) != 0 || uri.size() <= 5 || uri[5] == '/') {
    return Status(Code::kUsage, "'" + uri + "' is not an S3 location; write s3://BUCKET/PREFIX");
  }
  return OkStatus();
}

Status S3Upload(const fs::path& dir, const std::string& uri, const S3Options& options) {
  if (Status s = CheckS3Uri(uri); !s.ok()) return s;
  return RunAws(
      AwsArgs(options, {"s3", "sync", "--no-progress", "--only-show-errors", dir.string(), uri}),
      Code::kOutputError, "syncing " + dir.string() + " to " + uri);
}

Status S3UploadExcept(const fs::path& dir, const std::string& uri, const S3Options& options,
                      const std::set<std::string>& skip) {
  if (skip.empty()) return S3Upload(dir, uri, options);
  if (Status s = CheckS3Uri(uri); !s.ok()) return s;
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/stagekit-sync-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return Status(Code::kOutputError, "cannot create a temporary directory to sync " +
                                          dir.string() + " from: " + std::strerror(errno) +
                                          "; set TMPDIR to a writable directory");
  }
  const fs::path links = tmpl;
  std::error_code ec;
  const fs::path base = fs::absolute(dir, ec);
  Status status;
  std::size_t left = 0;
  for (auto it = fs::recursive_directory_iterator(base, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const fs::path rel = it->path().lexically_relative(base);
    if (skip.count(rel.generic_string()) != 0) continue;
    fs::create_directories((links / rel).parent_path(), ec);
    if (!ec) fs::create_symlink(it->path(), links / rel, ec);
    if (ec) break;
    ++left;
  }
  if (ec) {
    status = Status(Code::kOutputError,
                    "cannot list what to sync from " + dir.string() + ": " + ec.message());
  } else if (left > 0) {
    status = RunAws(AwsArgs(options, {"s3", "sync", "--no-progress", "--only-show-errors",
                                      "--follow-symlinks", links.string(), uri}),
                    Code::kOutputError, "syncing " + dir.string() + " to " + uri);
  }
  fs::remove_all(links, ec);
  return status;
}

Status S3Fetch(const std::string& uri, const fs::path& dir, const S3Options& options,
               bool overwrite, std::size_t* files) {
  if (Status s = CheckS3Uri(uri); !s.ok()) return s;
  std::error_code ec;
  const bool exists = fs::exists(dir, ec);
  if (exists && !overwrite && !(fs::is_directory(dir, ec) && fs::is_empty(dir, ec))) {
    return Status(Code::kOutputError, dir.string() +
                                          " already exists and is not empty; choose a new "
                                          "directory or pass --overwrite");
  }
  if (!dir.parent_path().empty()) fs::create_directories(dir.parent_path(), ec);
  const fs::path tmp = util::SiblingPath(dir, "fetch");
  if (!fs::create_directory(tmp, ec)) {
    return Status(Code::kOutputError, "cannot write beside " + dir.string() + ": " + ec.message());
  }
  auto cleanup = [&] { fs::remove_all(tmp, ec); };
  if (Status s = RunAws(AwsArgs(options, {"s3", "sync", "--no-progress", "--only-show-errors", uri,
                                          tmp.string()}),
                        Code::kInputError, "fetching " + uri);
      !s.ok()) {
    cleanup();
    return s;
  }
  std::size_t count = 0;
  for (fs::recursive_directory_iterator it(tmp, ec), end; !ec && it != end; it.increment(ec)) {
    count += it->is_regular_file(ec) ? 1 : 0;
  }
  if (count == 0) {
    cleanup();
    return Status(Code::kInputError, "nothing is stored under " + uri +
                                         "; check the location (aws s3 ls " + uri + ")");
  }
  fs::path old;
  if (exists) {
    old = util::SiblingPath(dir, "old");
    fs::rename(dir, old, ec);
    if (ec) {
      cleanup();
      return Status(Code::kOutputError, "cannot replace " + dir.string() + ": " + ec.message());
    }
  }
  fs::rename(tmp, dir, ec);
  if (ec) {
    if (!old.empty()) fs::rename(old, dir, ec);
    cleanup();
    return Status(Code::kOutputError, "cannot write " + dir.string() + ": " + ec.message());
  }
  if (!old.empty()) fs::remove_all(old, ec);
  if (files != nullptr) *files = count;
  return OkStatus();
}

}  // namespace stagekit::deploy
