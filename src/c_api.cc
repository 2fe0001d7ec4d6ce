#include "stagekit/c_api.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "stagekit/executor.h"
#include "stagekit/invoke.h"
#include "stagekit/version.h"
#include "util/digest.h"
#include "util/files.h"
#include "warm.h"

namespace {

int Emit(const std::string& text, int rc, char** out, std::size_t* out_len) {
  if (out != nullptr) {
    *out = static_cast<char*>(std::malloc(text.size() + 1));
    if (*out == nullptr) return static_cast<int>(stagekit::Code::kInternal);
    std::memcpy(*out, text.data(), text.size());
    (*out)[text.size()] = '\0';
  }
  if (out_len != nullptr) *out_len = text.size();
  return rc;
}

int EmitStatus(const stagekit::Status& s, char** out, std::size_t* out_len) {
  return Emit(stagekit::CanonicalJson(stagekit::ErrorToJson(s)), static_cast<int>(s.code()), out,
              out_len);
}

}  // namespace

extern "C" int stagekit_invoke_json(const char* request, size_t request_len, char** out,
                                    size_t* out_len) {
  return stagekit_invoke_json_warm(request, request_len, /*warm=*/1, out, out_len);
}

extern "C" int stagekit_invoke_json_warm(const char* request, size_t request_len, int warm,
                                         char** out, size_t* out_len) {
  using stagekit::Code;
  using stagekit::Status;
  try {
    if (request == nullptr)
      return EmitStatus(Status(Code::kBadRequest, "request is NULL"), out, out_len);
    auto req = stagekit::StageRequest::Parse(std::string_view(request, request_len));
    if (!req.ok()) return EmitStatus(req.status(), out, out_len);
    auto stats = stagekit::InvokeWarm(*req, stagekit::Registry::Global(), warm != 0);
    if (!stats.ok()) return EmitStatus(stats.status(), out, out_len);
    return Emit(stats->Canonical(), 0, out, out_len);
  } catch (const std::exception& e) {
    return EmitStatus(Status(Code::kInternal, std::string("stagekit_invoke_json: ") + e.what()),
                      out, out_len);
  } catch (...) {
    return EmitStatus(Status(Code::kInternal, "stagekit_invoke_json: unknown exception"), out,
                      out_len);
  }
}

extern "C" int stagekit_load_library(const char* path, char** out, size_t* out_len) {
  try {
    stagekit::Status s = stagekit::LoadStageLibrary(path == nullptr ? "" : path);
    if (!s.ok()) return EmitStatus(s, out, out_len);
    return Emit("{}", 0, out, out_len);
  } catch (...) {
    return EmitStatus(stagekit::Status(stagekit::Code::kInternal, "stagekit_load_library failed"),
                      out, out_len);
  }
}

extern "C" void stagekit_sha256_hex(const char* data, size_t len, char out[65]) {
  std::string hex = stagekit::util::HexDigest(stagekit::util::Sha256(
      std::string_view(data == nullptr ? "" : data, data == nullptr ? 0 : len)));
  std::memcpy(out, hex.c_str(), 65);
}

extern "C" int stagekit_write_output(const char* path, const char* data, size_t len, char** out,
                                     size_t* out_len) {
  try {
    namespace fs = std::filesystem;
    using stagekit::Code;
    using stagekit::Status;
    namespace util = stagekit::util;
    const fs::path target = path == nullptr ? "" : path;
    const std::string what = "output '" + target.string() + "'";
    if (Status s = util::CheckReplaceable(target, what); !s.ok()) {
      return EmitStatus(s, out, out_len);
    }
    auto made = util::CreateTempBeside(target);
    if (!made.ok()) return EmitStatus(made.status(), out, out_len);
    auto& [fd, tmp] = *made;
    Status s = util::WriteAllFd(fd.get(), data == nullptr ? "" : data, len, tmp);
    if (::close(fd.Release()) != 0 && s.ok()) {
      s = Status(Code::kOutputError, "cannot write " + tmp.string() + ": " + std::strerror(errno));
    }
    if (s.ok()) s = util::PublishFile(tmp, target, what);
    if (!s.ok()) {
      std::error_code ec;
      fs::remove(tmp, ec);
      return EmitStatus(s, out, out_len);
    }
    return Emit("{}", 0, out, out_len);
  } catch (...) {
    return EmitStatus(stagekit::Status(stagekit::Code::kInternal, "stagekit_write_output failed"),
                      out, out_len);
  }
}

struct stagekit_output {
  std::filesystem::path target;
  std::filesystem::path temp;
  stagekit::util::UniqueFd fd;
  stagekit::util::Sha256Stream hash;
};

extern "C" stagekit_output* stagekit_output_begin(const char* path, char** out, size_t* out_len) {
  try {
    const std::filesystem::path target = path == nullptr ? "" : path;
    const std::string what = "output '" + target.string() + "'";
    if (stagekit::Status s = stagekit::util::CheckReplaceable(target, what); !s.ok()) {
      EmitStatus(s, out, out_len);
      return nullptr;
    }
    auto made = stagekit::util::CreateTempBeside(target);
    if (!made.ok()) {
      EmitStatus(made.status(), out, out_len);
      return nullptr;
    }
    auto* h = new stagekit_output();
    h->target = target;
    h->fd = std::move(made->first);
    h->temp = std::move(made->second);
    return h;
  } catch (...) {
    EmitStatus(stagekit::Status(stagekit::Code::kInternal, "stagekit_output_begin failed"), out,
               out_len);
    return nullptr;
  }
}

extern "C" int stagekit_output_append(stagekit_output* h, const char* data, size_t len, char** out,
                                      size_t* out_len) {
  h->hash.Update(std::string_view(data == nullptr ? "" : data, data == nullptr ? 0 : len));
  stagekit::Status s = stagekit::util::WriteAllFd(h->fd.get(), data, len, h->temp);
  if (!s.ok()) return EmitStatus(s, out, out_len);
  return 0;
}

extern "C" void stagekit_output_abort(stagekit_output* h) {
  if (h == nullptr) return;
  h->fd.Reset();
  std::error_code ec;
  std::filesystem::remove(h->temp, ec);
  delete h;
}

extern "C" int stagekit_output_commit(stagekit_output* h, const char* expected_digest, char** out,
                                      size_t* out_len) {
  using stagekit::Code;
  using stagekit::Status;
  Status s;
  if (::close(h->fd.Release()) != 0) {
    s = Status(Code::kOutputError,
               "cannot write " + h->temp.string() + ": " + std::strerror(errno));
  }
  const std::string got = "sha256:" + stagekit::util::HexDigest(h->hash.Final());
  if (s.ok() && expected_digest != nullptr && got != expected_digest) {
    s = Status(Code::kOutputError, "output '" + h->target.string() + "' arrived as " + got +
                                       ", not " + expected_digest);
  }
  if (s.ok()) {
    s = stagekit::util::PublishFile(h->temp, h->target, "output '" + h->target.string() + "'");
  }
  if (!s.ok()) {
    stagekit_output_abort(h);
    return EmitStatus(s, out, out_len);
  }
  delete h;
  return Emit("{}", 0, out, out_len);
}

extern "C" void stagekit_free(char* buffer) { std::free(buffer); }

extern "C" const char* stagekit_version(void) { return STAGEKIT_VERSION; }
