// The Ray bridge: the only code that includes Ray's headers. Built with Ray's
// flags (-D_GLIBCXX_USE_CXX11_ABI=0, C++17) into libstagekit_ray.so and
// reached only through the C functions at the bottom (see
// src/ray_bridge_api.h) and through stagekit's own C ABI (c_api.h). No
// std::string or other ABI-dependent type crosses either line.
//
// Driver side: inputs go into the object store once per distinct file and are
// passed by reference to every task that reads them; the task returns its
// output bytes and RunStats in one frame, and the driver writes the output
// atomically. Worker side: one family of trampoline functions,
// stagekit_task_<N> for a stage with N inputs, materialises the inputs in a
// private scratch directory under their basenames and calls the invocation
// entry point, stagekit_invoke_json().
#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ray/api.h>
#include <nlohmann/json.hpp>

#include "frame.h"
#include "ray_bridge_api.h"
#include "stagekit/c_api.h"
#include "util/text.h"

namespace stagekit_ray {

using Bytes = std::vector<char>;

// What crosses the object store: a stage's result frame, an input file's
// bytes, a window of an output. On the wire a msgpack bin, exactly as a
// std::vector<char> (so every object stays readable as bytes); in memory
// shared, because Ray's C++ API copies an argument by value four times on
// its way from the decoder to the function (a pair, a return, a tuple, a
// cast) and its return value once more: a Blob makes each of those a
// reference count instead of a copy of up to gigabytes.
struct Blob {
  std::shared_ptr<const Bytes> bytes = std::make_shared<const Bytes>();
  Blob() = default;
  explicit Blob(Bytes b) : bytes(std::make_shared<const Bytes>(std::move(b))) {}
  const char* data() const { return bytes->data(); }
  std::size_t size() const { return bytes->size(); }
  bool empty() const { return bytes->empty(); }
};

// The header task's argument: only the header of a result frame is kept
// from the decoded object (the output bytes are never copied), or at most
// 64 KiB of an object that is not a frame (a Ray error decoded as a value).
struct FrameHeadArg {
  Bytes head;
  FrameHeadArg() = default;
  // Only for Ray's compile-time check that a Blob reference may be passed.
  FrameHeadArg(const Blob& blob)  // NOLINT(google-explicit-constructor)
      : head(stagekit::frame::KeepHead(blob.data(), blob.size())) {}
};

}  // namespace stagekit_ray

namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
  namespace adaptor {

  template <>
  struct convert<stagekit_ray::Blob> {
    const msgpack::object& operator()(const msgpack::object& o, stagekit_ray::Blob& v) const {
      if (o.type != msgpack::type::BIN && o.type != msgpack::type::STR) throw msgpack::type_error();
      const char* p = o.type == msgpack::type::BIN ? o.via.bin.ptr : o.via.str.ptr;
      const std::size_t n = o.type == msgpack::type::BIN ? o.via.bin.size : o.via.str.size;
      v.bytes = std::make_shared<const stagekit_ray::Bytes>(p, p + n);
      return o;
    }
  };

  template <>
  struct pack<stagekit_ray::Blob> {
    template <typename Stream>
    msgpack::packer<Stream>& operator()(msgpack::packer<Stream>& o,
                                        const stagekit_ray::Blob& v) const {
      // Past 4 GiB msgpack has no length to write: an error, as for bytes.
      const std::uint32_t n = msgpack::checked_get_container_size(v.size());
      o.pack_bin(n);
      o.pack_bin_body(v.data(), n);
      return o;
    }
  };

  template <>
  struct convert<stagekit_ray::FrameHeadArg> {
    const msgpack::object& operator()(const msgpack::object& o,
                                      stagekit_ray::FrameHeadArg& v) const {
      if (o.type == msgpack::type::BIN) {
        v.head = stagekit::frame::KeepHead(o.via.bin.ptr, o.via.bin.size);
      } else if (o.type == msgpack::type::STR) {
        v.head = stagekit::frame::KeepHead(o.via.str.ptr, o.via.str.size);
      } else {
        throw msgpack::type_error();
      }
      return o;
    }
  };

  }  // namespace adaptor
}  // MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS)
}  // namespace msgpack

namespace {

using nlohmann::json;
using stagekit_ray::Blob;
using stagekit_ray::Bytes;
using stagekit_ray::FrameHeadArg;

constexpr std::size_t kMaxInputs = 48;
// The most one object can hold: msgpack writes a bin's length in 32 bits.
constexpr std::uint64_t kMaxObjectBytes = 0xffffffffull;

// The wire name of a code (stagekit/c_api.h): the bridge only reports library codes.
const char* CodeName(int code) {
  const char* name = stagekit_code_name(code);
  return name != nullptr ? name : "internal";
}

json ErrorJson(int code, const std::string& message) {
  return json{{"error", {{"code", CodeName(code)}, {"message", message}}}};
}

int Emit(const std::string& text, int rc, char** out, std::size_t* out_len) {
  *out = static_cast<char*>(std::malloc(text.size() + 1));
  if (*out == nullptr) return STAGEKIT_INTERNAL;
  std::memcpy(*out, text.data(), text.size());
  (*out)[text.size()] = '\0';
  *out_len = text.size();
  return rc;
}

int EmitError(int code, const std::string& message, char** out, std::size_t* out_len) {
  return Emit(ErrorJson(code, message).dump(), code, out, out_len);
}

bool WriteAll(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

// Reads the file at `path` into `frame` after its first `at` bytes.
bool ReadFileInto(const std::string& path, Bytes& frame, std::size_t at) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return false;
  }
  frame.resize(at + static_cast<std::size_t>(st.st_size));
  std::size_t got = at;
  bool ok = true;
  for (;;) {
    if (got == frame.size()) frame.resize(frame.size() + (1 << 16));  // it grew meanwhile
    ssize_t r = ::read(fd, frame.data() + got, frame.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) ok = false;
    if (r <= 0) break;
    got += static_cast<std::size_t>(r);
  }
  ::close(fd);
  frame.resize(got);
  return ok;
}

// The whole file at `path` (st_size is only a hint: files under /proc say 0).
bool ReadFile(const std::string& path, Bytes& out) {
  out.clear();
  return ReadFileInto(path, out, 0);
}

std::string Basename(const std::string& path) {
  std::size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// ---------------------------------------------------------------------------
// Worker side

// A frame (ray/frame.h) with `status` and no output bytes.
Bytes Frame(const std::string& status, std::nullptr_t) { return stagekit::frame::Encode(status); }

Bytes ErrorFrame(int code, const std::string& message) {
  return Frame(ErrorJson(code, message).dump(), nullptr);
}

std::size_t FrameHeaderSize(const char* data, std::size_t size) {
  return stagekit::frame::HeaderSize(data, size);
}

std::size_t FrameHeaderSize(const Blob& frame) {
  return FrameHeaderSize(frame.data(), frame.size());
}

// Run beside a stage's result when the driver does not fetch the output: the
// result's header alone (its RunStats or error), so that only those bytes
// reach the driver. Its argument is decoded without copying the output.
Blob FrameHead(FrameHeadArg frame) { return Blob(std::move(frame.head)); }

// "host:<node manager port>": which raylet this worker belongs to. The C++
// worker gets the port as a command line flag and no node id in its
// environment.
const std::string& NodeName() {
  static const std::string name = [] {
    char host[256] = {};
    ::gethostname(host, sizeof(host) - 1);
    std::string port;
    Bytes cmdline;
    if (ReadFile("/proc/self/cmdline", cmdline)) {
      std::string args(cmdline.begin(), cmdline.end());
      const std::string flag = "--ray_node_manager_port=";
      std::size_t at = args.find(flag);
      if (at != std::string::npos)
        port = args.substr(at + flag.size(), args.find('\0', at) - at - flag.size());
    }
    return std::string(host) + (port.empty() ? "" : ":" + port);
  }();
  return name;
}

std::string LoadLibraries(const json& libraries) {
  static std::mutex mu;
  static std::set<std::string> loaded;
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& lib : libraries) {
    std::string path = lib.get<std::string>();
    if (loaded.count(path) != 0) continue;
    char* out = nullptr;
    std::size_t len = 0;
    int rc = stagekit_load_library(path.c_str(), &out, &len);
    std::string reply(out == nullptr ? "" : out, len);
    stagekit_free(out);
    if (rc != 0) return reply;
    loaded.insert(path);
  }
  return "";
}

int RemoveEntry(const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }

// The free bytes of the memory file system at `dir`, or 0 when it is not one.
std::uint64_t TmpfsFree(const char* dir) {
  struct statfs fs {};
  constexpr long kTmpfsMagic = 0x01021994;
  if (::statfs(dir, &fs) != 0 || static_cast<long>(fs.f_type) != kTmpfsMagic) return 0;
  struct statvfs vfs {};
  if (::statvfs(dir, &vfs) != 0) return 0;
  return static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
}

// MemAvailable of /proc/meminfo in bytes, or 0 when unknown.
std::uint64_t MemoryAvailable() {
  Bytes text;
  if (!ReadFile("/proc/meminfo", text)) return 0;
  const std::string s(text.begin(), text.end());
  const std::size_t at = s.find("MemAvailable:");
  if (at == std::string::npos) return 0;
  return std::strtoull(s.c_str() + at + 13, nullptr, 10) * 1024;
}

// Where a task's scratch folder goes. $STAGEKIT_SCRATCH_DIR on the node when
// set; else /dev/shm when it is a memory file system with room (and memory
// available) for the inputs three times over and 1 GiB besides: the files
// live only as long as the task, and writing a gigabyte into memory takes a
// tenth of the time it takes through a disk's page cache (measured on the
// CI machine: 0.40 s against 3.16 s); else $TMPDIR, else /tmp.
std::string ScratchRoot(std::uint64_t input_bytes) {
  const char* chosen = std::getenv("STAGEKIT_SCRATCH_DIR");
  if (chosen != nullptr && *chosen != '\0') return chosen;
  const std::uint64_t need = 3 * input_bytes + (1ull << 30);
  if (TmpfsFree("/dev/shm") >= need && MemoryAvailable() >= need) return "/dev/shm";
  const char* tmp = std::getenv("TMPDIR");
  return tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
}

// Writes each input into its own folder under `scratch` (equal basenames stay
// apart); returns {name: path} for the request. An input passed by reference
// is another stage's result: a frame whose bytes after the header are that
// stage's output. Throws what went wrong.
json MaterializeInputs(const std::string& scratch, const json& names,
                       const std::vector<const Blob*>& inputs, std::uint64_t input_bytes) {
  json in = json::object();
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    std::string dir = scratch + "/in" + std::to_string(i);
    std::string path = dir + "/" + names[i][1].get<std::string>();
    const char* data = inputs[i]->data();
    std::size_t size = inputs[i]->size();
    if (names[i].size() > 2 && names[i][2].get<bool>()) {
      std::size_t header = FrameHeaderSize(*inputs[i]);
      if (header == 0) {
        throw std::runtime_error("input '" + names[i][0].get<std::string>() +
                                 "' came by reference but is not a stage result");
      }
      data += header;
      size -= header;
    }
    int fd = -1;
    if (::mkdir(dir.c_str(), 0700) == 0)
      fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || !WriteAll(fd, data, size)) {
      std::string err = std::strerror(errno);
      if (fd >= 0) ::close(fd);
      throw std::runtime_error("cannot materialise input '" + names[i][0].get<std::string>() +
                               "' in " + ScratchRoot(input_bytes) + ": " + err);
    }
    ::close(fd);
    in[names[i][0].get<std::string>()] = path;
  }
  return in;
}

// The task's result: the stage's reply (rc, `status`) as the frame's header
// and, on success, the output file read straight in behind it (one copy).
Bytes ResultFrame(int rc, const std::string& status, const std::string& output) {
  if (rc != 0) {
    json err = json::parse(status);
    err["error"]["message"] =
        err["error"]["message"].get<std::string>() + " (on Ray node " + NodeName() + ")";
    return Frame(err.dump(), nullptr);
  }
  json stats = json::parse(status);
  stats["node"] = NodeName();
  Bytes frame = Frame(stats.dump(), nullptr);
  struct stat st {};
  if (::stat(output.c_str(), &st) == 0 &&
      frame.size() + static_cast<std::uint64_t>(st.st_size) > kMaxObjectBytes) {
    return ErrorFrame(STAGEKIT_OUTPUT_ERROR, "the output is " + std::to_string(st.st_size) +
                                                 " bytes; a Ray object carries at most 4 GiB - 1 "
                                                 "(msgpack's limit in Ray's C++ API): split the "
                                                 "stage's output (on Ray node " +
                                                 NodeName() + ")");
  }
  if (!ReadFileInto(output, frame, frame.size())) {
    throw std::runtime_error("cannot read back the output: " + std::string(std::strerror(errno)));
  }
  return frame;
}

Blob RunImpl(const std::string& payload, const std::vector<const Blob*>& inputs) {
  std::string scratch;
  try {
    json p = json::parse(payload);
    std::string lib_error = LoadLibraries(p.at("libraries"));
    if (!lib_error.empty()) return Blob(Frame(lib_error, nullptr));

    std::uint64_t input_bytes = 0;
    for (const Blob* input : inputs) input_bytes += input->size();
    std::string tmpl = ScratchRoot(input_bytes) + "/stagekit-task-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      return Blob(ErrorFrame(STAGEKIT_INTERNAL, "cannot create a scratch directory on " +
                                                    NodeName() + ": " + std::strerror(errno)));
    }
    scratch = tmpl;
    json request = p.at("request");
    request["inputs"] = MaterializeInputs(scratch, p.at("inputs"), inputs, input_bytes);
    std::string out_dir = scratch + "/out";
    ::mkdir(out_dir.c_str(), 0700);
    std::string output = out_dir + "/" + p.at("output_name").get<std::string>();
    request["output"] = output;

    std::string text = request.dump();
    char* reply = nullptr;
    std::size_t reply_len = 0;
    // A warm stage sets up once per worker process (an actor's, normally);
    // "cold" asks for a setup for this run only.
    int rc = stagekit_invoke_json_warm(text.data(), text.size(), p.value("cold", false) ? 0 : 1,
                                       &reply, &reply_len);
    std::string status(reply == nullptr ? "" : reply, reply_len);
    stagekit_free(reply);
    Bytes frame = ResultFrame(rc, status, output);
    ::nftw(scratch.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
    return Blob(std::move(frame));
  } catch (const std::exception& e) {
    if (!scratch.empty()) ::nftw(scratch.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
    return Blob(
        ErrorFrame(STAGEKIT_INTERNAL, std::string("ray task on ") + NodeName() + ": " + e.what()));
  }
}

template <std::size_t>
using AlwaysBlob = Blob;

template <typename Seq>
struct Task;
template <std::size_t... I>
struct Task<std::index_sequence<I...>> {
  static Blob Run(std::string payload, AlwaysBlob<I>... inputs) {
    return RunImpl(payload, std::vector<const Blob*>{&inputs...});
  }
};

template <std::size_t N>
std::string TaskName() {
  return "stagekit_task_" + std::to_string(N);
}

template <std::size_t... N>
bool RegisterTasks(std::index_sequence<N...>) {
  (ray::internal::FunctionManager::Instance().RegisterRemoteFunction(
       TaskName<N>(), &Task<std::make_index_sequence<N>>::Run),
   ...);
  return true;
}

// Warm stages: an actor whose process keeps the stage's warm instance (the
// process-wide pool behind stagekit_invoke_json) between its tasks. One
// method per input count, like the task trampolines; a warm stage with more
// inputs runs as a plain task.
constexpr std::size_t kMaxWarmInputs = 16;

class StagekitWarmActor {
 public:
  // `key` names what the actor is for (stage, job, setup); the setup itself
  // happens in its first task, so that a failing setup fails that task
  // with the stage's message instead of killing the actor.
  static StagekitWarmActor* FactoryCreate(std::string key) { return new StagekitWarmActor(key); }
  template <std::size_t... I>
  Blob Run(std::string payload, AlwaysBlob<I>... inputs) {
    return RunImpl(payload, std::vector<const Blob*>{&inputs...});
  }

 private:
  explicit StagekitWarmActor(std::string key) : key_(std::move(key)) {}
  std::string key_;
};

template <std::size_t... I>
auto WarmMethod(std::index_sequence<I...>) {
  return &StagekitWarmActor::Run<I...>;
}

template <std::size_t N>
std::string WarmMethodName() {
  return "&StagekitWarmActor::Run" + std::to_string(N);
}

template <std::size_t... N>
bool RegisterWarmActor(std::index_sequence<N...>) {
  ray::internal::FunctionManager::Instance().RegisterRemoteFunction(
      "StagekitWarmActor::FactoryCreate", &StagekitWarmActor::FactoryCreate);
  (ray::internal::FunctionManager::Instance().RegisterRemoteFunction(
       WarmMethodName<N>(), WarmMethod(std::make_index_sequence<N>{})),
   ...);
  return true;
}

// Hands a large stage result to the driver one window at a time. Created with
// the result as its argument, so that Ray brings the bytes to the reader's
// node (node to node, never through the driver; beside the result when Ray
// can) and the reader decodes them once, however many windows follow.
class StagekitOutputReader {
 public:
  static StagekitOutputReader* FactoryCreate(Blob frame) {
    return new StagekitOutputReader(std::move(frame));
  }
  // Up to `length` bytes of the output from `offset`.
  Blob Read(std::uint64_t offset, std::uint64_t length) {
    const std::size_t header = FrameHeaderSize(frame_);
    if (header == 0) return Blob();
    const std::size_t size = frame_.size() - header;
    const std::size_t begin =
        header + static_cast<std::size_t>(std::min<std::uint64_t>(offset, size));
    const std::size_t end =
        begin + static_cast<std::size_t>(std::min<std::uint64_t>(length, frame_.size() - begin));
    return Blob(Bytes(frame_.data() + begin, frame_.data() + end));
  }

 private:
  explicit StagekitOutputReader(Blob frame) : frame_(std::move(frame)) {}
  Blob frame_;
};

// Uploads a stage's output (its result's bytes after the header) to S3 from
// the node it runs on, which Ray picks for holding the result: no byte
// crosses to the driver. The node's own `aws` ($STAGEKIT_AWS, else `aws` on
// its PATH) with the node's own credentials. `spec` is {"uri", "endpoint"}.
// Returns a frame whose header is {"node", "seconds"} or an error.
Blob UploadOutput(std::string spec, Blob frame) {
  std::string scratch;
  const auto start = std::chrono::steady_clock::now();
  try {
    const json p = json::parse(spec);
    const std::string uri = p.at("uri").get<std::string>();
    const std::size_t header = FrameHeaderSize(frame);
    if (header == 0)
      return Blob(ErrorFrame(STAGEKIT_INTERNAL, "the result to upload is not a stage's"));
    const std::size_t size = frame.size() - header;
    std::string tmpl = ScratchRoot(size) + "/stagekit-upload-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr)
      throw std::runtime_error(std::string("cannot create a scratch directory: ") +
                               std::strerror(errno));
    scratch = tmpl;
    const std::string file = scratch + "/" + Basename(uri);
    const std::string log = scratch + "/aws.log";
    int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || !WriteAll(fd, frame.data() + header, size)) {
      std::string err = std::strerror(errno);
      if (fd >= 0) ::close(fd);
      throw std::runtime_error("cannot write the output to upload: " + err);
    }
    ::close(fd);
    const char* aws_env = std::getenv("STAGEKIT_AWS");
    std::vector<std::string> args = {aws_env != nullptr && *aws_env != '\0' ? aws_env : "aws",
                                     "s3",
                                     "cp",
                                     "--no-progress",
                                     "--only-show-errors",
                                     file,
                                     uri};
    const std::string endpoint = p.value("endpoint", "");
    if (!endpoint.empty()) {
      args.push_back("--endpoint-url");
      args.push_back(endpoint);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    pid_t pid = -1;
    const int spawned = ::posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) {
      throw std::runtime_error("cannot run `" + args[0] + "` (" + std::strerror(spawned) +
                               "): install the AWS CLI on every node, or set STAGEKIT_AWS there");
    }
    int wstatus = 0;
    while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    Bytes out;
    ReadFile(log, out);
    std::string said(out.begin(), out.end());
    while (!said.empty() && (said.back() == '\n' || said.back() == ' ')) said.pop_back();
    if (said.size() > 1000) said = "..." + said.substr(said.size() - 1000);
    ::nftw(scratch.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
    scratch.clear();
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
      const std::string how = WIFEXITED(wstatus) ? "exit " + std::to_string(WEXITSTATUS(wstatus))
                                                 : "signal " + std::to_string(WTERMSIG(wstatus));
      return Blob(ErrorFrame(STAGEKIT_OUTPUT_ERROR, "`aws s3 cp` to " + uri +
                                                        " failed on Ray node " + NodeName() + " (" +
                                                        how + "): " + said));
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return Blob(Frame(json{{"node", NodeName()}, {"seconds", seconds}}.dump(), nullptr));
  } catch (const std::exception& e) {
    if (!scratch.empty()) ::nftw(scratch.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
    return Blob(
        ErrorFrame(STAGEKIT_OUTPUT_ERROR, "uploading on Ray node " + NodeName() + ": " + e.what()));
  }
}

bool RegisterFrameHead() {
  auto& functions = ray::internal::FunctionManager::Instance();
  functions.RegisterRemoteFunction("stagekit_frame_head", &FrameHead);
  functions.RegisterRemoteFunction("stagekit_upload_output", &UploadOutput);
  functions.RegisterRemoteFunction("StagekitOutputReader::FactoryCreate",
                                   &StagekitOutputReader::FactoryCreate);
  functions.RegisterRemoteFunction("&StagekitOutputReader::Read", &StagekitOutputReader::Read);
  return true;
}

// Registered in the driver and in every worker that loads this library.
const bool kRegistered = RegisterTasks(std::make_index_sequence<kMaxInputs + 1>{}) &&
                         RegisterWarmActor(std::make_index_sequence<kMaxWarmInputs + 1>{}) &&
                         RegisterFrameHead();

// ---------------------------------------------------------------------------
// Driver side

using Resources = std::unordered_map<std::string, double>;
using SubmitFn = ray::ObjectRef<Blob> (*)(const std::string&,
                                          const std::vector<ray::ObjectRef<Blob>>&,
                                          const Resources&, const std::string&);

template <std::size_t... I>
ray::ObjectRef<Blob> SubmitWith(const std::string& payload,
                                const std::vector<ray::ObjectRef<Blob>>& refs,
                                const Resources& resources, const std::string& name,
                                std::index_sequence<I...>) {
  auto caller = ray::Task(&Task<std::index_sequence<I...>>::Run);
  caller.SetName(name);
  if (!resources.empty()) caller.SetResources(resources);
  return caller.Remote(payload, refs[I]...);
}

template <std::size_t N>
ray::ObjectRef<Blob> Submit(const std::string& payload,
                            const std::vector<ray::ObjectRef<Blob>>& refs,
                            const Resources& resources, const std::string& name) {
  return SubmitWith(payload, refs, resources, name, std::make_index_sequence<N>{});
}

template <std::size_t... N>
std::array<SubmitFn, sizeof...(N)> SubmitTable(std::index_sequence<N...>) {
  return {&Submit<N>...};
}

using WarmHandle = ray::ActorHandle<StagekitWarmActor>;
using ActorSubmitFn = ray::ObjectRef<Blob> (*)(WarmHandle&, const std::string&,
                                               const std::vector<ray::ObjectRef<Blob>>&);

template <std::size_t... I>
ray::ObjectRef<Blob> ActorSubmitWith(WarmHandle& actor, const std::string& payload,
                                     const std::vector<ray::ObjectRef<Blob>>& refs,
                                     std::index_sequence<I...>) {
  return actor.Task(WarmMethod(std::index_sequence<I...>{})).Remote(payload, refs[I]...);
}

template <std::size_t N>
ray::ObjectRef<Blob> ActorSubmit(WarmHandle& actor, const std::string& payload,
                                 const std::vector<ray::ObjectRef<Blob>>& refs) {
  return ActorSubmitWith(actor, payload, refs, std::make_index_sequence<N>{});
}

template <std::size_t... N>
std::array<ActorSubmitFn, sizeof...(N)> ActorSubmitTable(std::index_sequence<N...>) {
  return {&ActorSubmit<N>...};
}

struct InputKey {
  std::string path;
  dev_t dev;
  ino_t ino;
  off_t size;
  std::int64_t mtime_ns;
  bool operator<(const InputKey& o) const {
    return std::tie(path, dev, ino, size, mtime_ns) <
           std::tie(o.path, o.dev, o.ino, o.size, o.mtime_ns);
  }
};

}  // namespace

// A stage output this driver's run produced: its task's result, which stays
// in the object store (on the node that made it) for the stages that read it.
struct Produced {
  ray::ObjectRef<Blob> frame;
  std::string node;
  std::uint64_t bytes = 0;
  int readers_left = 0;  // stages still to read it; released at zero
};

// How to make a stage's output again, should its result be lost with its
// node: the stage's task as it was submitted. Ray's C++ API cannot ask Ray
// to re-execute a task (no max_retries), so the bridge keeps its lineage.
struct Recipe {
  json payload;  // the task's payload, less its input names
  std::unordered_map<std::string, double> resources;
  std::string instance;
  json inputs;  // input name -> path, as in the request
};

using Clock = std::chrono::steady_clock;
constexpr int kFetchThreads = 4;  // outputs fetched at once

// One submitted stage, from submission to its completion. Owned by the
// driver's loop thread, or by a fetch thread while its output is fetched.
struct StageRun {
  std::uint64_t ticket = 0;
  bool sync = false;  // stagekit_ray_bridge_run waits for this one itself
  json request, task, payload;
  std::string label, output, warm_key;
  Resources resources;
  bool fetch = true;
  std::uint64_t window = 32ull << 20;
  // s3:// location its output goes to from the node that holds it, and the
  // S3 endpoint; uploading: what is awaited is that upload.
  std::string artifact, s3_endpoint;
  bool uploading = false;
  int max_attempts = 3, max_actors = 0;
  long timeout_ms = 0;
  Clock::time_point start, not_before;  // start: its first submission (for its timeout)
  enum class Phase { kStarting, kRunning, kFetching, kDone } phase = Phase::kStarting;
  int attempt = 0;                         // of the attempt running, or last run
  std::vector<ray::ObjectRef<Blob>> refs;  // its inputs
  json names;                              // [name, basename, by reference?] per input
  std::optional<WarmHandle> actor;
  bool fresh_actor = false;
  std::uint64_t want = 0;  // see Want()
  // Its result, and what is awaited: the header task's result, or the
  // result itself when the header task failed.
  ray::ObjectRef<Blob> result, awaited;
  bool awaiting_head = true;
  json status;  // its RunStats, once its header arrived
  std::string last_failure;
  // The last attempt failed as if an input result was lost: the next one
  // makes its inputs passed by reference again from their recipes.
  bool remake_inputs = false;
  // Its inputs' results were released (once, whatever retries follow), and
  // the driver was told its output is made before the fetch (see Made()).
  bool inputs_released = false, told_made = false;
};

struct stagekit_ray_bridge {
  // The driver's loop (one thread however many stages run) and the fetch
  // threads: stages submitted, outputs to fetch; guarded by loop_mu.
  std::mutex loop_mu;
  std::condition_variable loop_cv, fetch_cv;
  std::deque<std::unique_ptr<StageRun>> submitted, to_fetch;
  std::atomic<bool> closing{false};
  // The driver's cancellation (stagekit_ray_bridge_set_cancel); none: never.
  int (*cancelled)(const void*) = nullptr;
  const void* cancel_ctx = nullptr;
  bool Cancelled() const { return cancelled != nullptr && cancelled(cancel_ctx) != 0; }
  std::thread loop;
  std::vector<std::thread> fetchers;
  // Finished stages: for stagekit_ray_bridge_wait, and for synchronous runs
  // by ticket; guarded by done_mu.
  std::mutex done_mu;
  std::condition_variable done_cv;
  std::deque<json> done_any;
  std::map<std::uint64_t, json> done_sync;
  std::atomic<std::uint64_t> next_sync_ticket{1ull << 63};

  std::mutex mu;
  std::map<InputKey, ray::ObjectRef<Blob>> inputs;
  std::map<std::string, Produced> produced;  // by output path, guarded by mu
  // Every output of this run that other stages read, by path: kept for the
  // whole run (about the size of the stage's request), guarded by mu.
  std::map<std::string, std::shared_ptr<const Recipe>> recipes;
  std::atomic<std::uint64_t> objects_put{0}, bytes_put{0}, tasks{0}, retries{0};
  // The data plane: outputs fetched into the output folder and their bytes,
  // outputs left on the cluster, and inputs passed by reference.
  std::atomic<std::uint64_t> outputs_fetched{0}, bytes_fetched{0}, outputs_remote{0},
      bytes_remote{0}, inputs_by_reference{0}, bytes_by_reference{0}, windows_fetched{0},
      results_released{0}, helper_tasks{0}, results_remade{0}, outputs_uploaded{0},
      bytes_uploaded{0}, uploads_failed{0};
  // Warm actors: idle ones by key; every live one, to kill on close. An actor
  // serves one stage at a time; a key has at most as many actors as stages
  // at once, and no more than the cluster can hold (max_actors).
  std::mutex actors_mu;
  std::map<std::string, std::vector<WarmHandle>> idle_actors;
  std::map<std::string, WarmHandle> live_actors;  // by actor id
  std::map<std::string, int> live_per_key;
  std::map<std::string, std::string> key_of;     // actor id -> key
  std::map<std::string, Resources> held_by_key;  // what a key's actors hold
  // Who is waiting for, or using, a resource an actor may hold: plain tasks
  // (key "") and actors being started, by a serial number.
  std::map<std::uint64_t, std::pair<std::string, Resources>> wanting;
  std::uint64_t next_want = 1;
  std::atomic<std::uint64_t> actors_started{0};
};

namespace {

// The object reference of an input file, put into the object store the first
// time this file (same path, inode, size and mtime) is seen.
bool InputRef(stagekit_ray_bridge* h, const std::string& path, ray::ObjectRef<Blob>& ref,
              std::string& error) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    error = "cannot open '" + path + "': " + std::strerror(errno);
    return false;
  }
  InputKey key{path, st.st_dev, st.st_ino, st.st_size,
               static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
  std::lock_guard<std::mutex> lock(h->mu);  // also keeps two threads from putting the same file
  auto it = h->inputs.find(key);
  if (it != h->inputs.end()) {
    ref = it->second;
    return true;
  }
  if (static_cast<std::uint64_t>(st.st_size) > kMaxObjectBytes) {
    error = "input file '" + path + "' is " + std::to_string(st.st_size) +
            " bytes; a Ray object carries at most 4 GiB - 1 (msgpack's limit in Ray's C++ API): "
            "split it, or read it from shared storage by path";
    return false;
  }
  Bytes bytes;
  if (!ReadFile(path, bytes)) {
    error = "cannot read '" + path + "': " + std::strerror(errno);
    return false;
  }
  h->objects_put++;
  h->bytes_put += bytes.size();
  ref = ray::Put(Blob(std::move(bytes)));
  h->inputs.emplace(key, ref);
  return true;
}

// The output through stagekit's own publisher (unpredictable exclusive
// temporary, never replacing a non-regular file), so that the three executors
// publish alike.
int WriteOutputAtomically(const std::string& output, const char* data, std::size_t n,
                          std::string& error) {
  char* reply = nullptr;
  std::size_t reply_len = 0;
  int rc = stagekit_write_output(output.c_str(), data, n, &reply, &reply_len);
  if (rc != 0) {
    json j = json::parse(std::string(reply == nullptr ? "" : reply, reply_len), nullptr, false);
    error = j.is_object() && j.contains("error") ? j["error"].value("message", "")
                                                 : "cannot write output '" + output + "'";
  }
  stagekit_free(reply);
  return rc;
}

// Whether two resource maps share a resource other than CPU.
bool ShareHeldResource(const Resources& a, const Resources& b) {
  for (const auto& [name, amount] : a) {
    if (name != "CPU" && amount > 0 && b.count(name) != 0 && b.at(name) > 0) return true;
  }
  return false;
}

// Kills the idle actors of keys other than `key` that hold any of the
// resources in `wanted`: an idle actor keeps its GPU (or custom resource)
// for its life, and a stage or actor that needs it would wait forever.
// Called with actors_mu held; the kills happen after it is released.
std::vector<WarmHandle> EvictIdleHolders(stagekit_ray_bridge* h, const std::string& key,
                                         const Resources& wanted) {
  std::vector<WarmHandle> doomed;
  for (auto& [other, idle] : h->idle_actors) {
    if (other == key || idle.empty()) continue;
    auto held = h->held_by_key.find(other);
    if (held == h->held_by_key.end() || !ShareHeldResource(held->second, wanted)) continue;
    for (WarmHandle& actor : idle) {
      h->live_actors.erase(actor.ID());
      h->key_of.erase(actor.ID());
      --h->live_per_key[other];
      doomed.push_back(actor);
    }
    idle.clear();
  }
  return doomed;
}

void KillActors(std::vector<WarmHandle>& actors) {
  for (WarmHandle& actor : actors) {
    try {
      actor.Kill(true);
    } catch (...) {
    }
  }
}

// Records that `key` ("" for a plain task) waits for or uses `resources`
// until Unwant(); an actor released meanwhile that holds any of them goes
// away instead of idling. Called with actors_mu held; 0 when only CPUs are
// wanted.
std::uint64_t Want(stagekit_ray_bridge* h, const std::string& key, const Resources& resources) {
  Resources held;
  for (const auto& [name, amount] : resources) {
    if (name != "CPU" && amount > 0) held[name] = amount;
  }
  if (held.empty()) return 0;
  const std::uint64_t id = h->next_want++;
  h->wanting.emplace(id, std::make_pair(key, std::move(held)));
  return id;
}

// Forgets a Want() when its attempt ends, whichever way.
void Unwant(stagekit_ray_bridge* h, std::uint64_t& id) {
  if (id == 0) return;
  std::lock_guard<std::mutex> lock(h->actors_mu);
  h->wanting.erase(id);
  id = 0;
}

// A plain task that needs a GPU or custom resource: make idle warm actors
// that hold it let go first, and busy ones as soon as they are done.
void FreeHeldResources(stagekit_ray_bridge* h, const Resources& resources, std::uint64_t& want) {
  std::vector<WarmHandle> doomed;
  {
    std::lock_guard<std::mutex> lock(h->actors_mu);
    want = Want(h, std::string(), resources);
    doomed = EvictIdleHolders(h, std::string(), resources);
  }
  KillActors(doomed);
}

// An idle actor of `key`, or a new one when fewer than `max_actors` (0: no
// limit) are alive; nullopt when neither (the stage waits for one to go idle).
std::optional<WarmHandle> TryAcquireActor(stagekit_ray_bridge* h, const std::string& key,
                                          const Resources& resources, int max_actors, bool& fresh,
                                          std::uint64_t& want) {
  // The actor holds the stage's GPU, memory and custom resources for its
  // life (its setup may have loaded a model onto the GPU), but not its CPUs:
  // idle actors holding every CPU would starve the plain tasks after them.
  // stagekit's --jobs bounds how many stages run at once.
  Resources held;
  for (const auto& [name, amount] : resources) {
    if (name != "CPU") held[name] = amount;
  }
  std::vector<WarmHandle> doomed;
  {
    std::lock_guard<std::mutex> lock(h->actors_mu);
    auto it = h->idle_actors.find(key);
    if (it != h->idle_actors.end() && !it->second.empty()) {
      WarmHandle actor = it->second.back();
      it->second.pop_back();
      fresh = false;
      return actor;
    }
    if (max_actors > 0 && h->live_per_key[key] >= max_actors) return std::nullopt;
    ++h->live_per_key[key];
    h->held_by_key[key] = held;
    want = Want(h, key, held);
    doomed = EvictIdleHolders(h, key, held);
  }
  KillActors(doomed);
  auto creator = ray::Actor(&StagekitWarmActor::FactoryCreate);
  if (!held.empty()) creator.SetResources(held);
  WarmHandle actor = creator.Remote(key);
  h->actors_started++;
  fresh = true;
  std::lock_guard<std::mutex> lock(h->actors_mu);
  h->live_actors.emplace(actor.ID(), actor);
  h->key_of.emplace(actor.ID(), key);
  return actor;
}

void ReleaseActor(stagekit_ray_bridge* h, const std::string& key, const WarmHandle& actor) {
  bool needed_elsewhere = false;
  {
    std::lock_guard<std::mutex> lock(h->actors_mu);
    // A plain task or another stage's actor waits for what this one holds:
    // let it go rather than keep it idle.
    const Resources& held = h->held_by_key[key];
    for (const auto& [id, want] : h->wanting) {
      if (want.first != key && ShareHeldResource(held, want.second)) needed_elsewhere = true;
    }
    if (needed_elsewhere) {
      h->live_actors.erase(actor.ID());
      h->key_of.erase(actor.ID());
      --h->live_per_key[key];
    } else {
      h->idle_actors[key].push_back(actor);
    }
  }
  if (needed_elsewhere) {
    std::vector<WarmHandle> doomed = {actor};
    KillActors(doomed);
  }
}

// An actor that died, hung past its timeout or was interrupted: kill it for
// good (no restart) and forget it; the next Run of its key starts another.
void DiscardActor(stagekit_ray_bridge* h, WarmHandle actor) {
  {
    std::lock_guard<std::mutex> lock(h->actors_mu);
    h->live_actors.erase(actor.ID());
    auto key = h->key_of.find(actor.ID());
    if (key != h->key_of.end()) {
      --h->live_per_key[key->second];
      h->key_of.erase(key);
    }
  }
  try {
    actor.Kill(true);
  } catch (...) {
  }
}

std::string Label(const json& request) {
  std::string stage = request.value("stage", "");
  std::string instance = request.value("instance", stage);
  return instance == stage ? "stage '" + stage + "'" : "stage '" + instance + "' (" + stage + ")";
}

// The message of an error JSON from stagekit's C API.
std::string ErrorMessage(char* reply, std::size_t len) {
  json j = json::parse(std::string(reply == nullptr ? "" : reply, len), nullptr, false);
  stagekit_free(reply);
  if (j.is_object() && j.contains("error")) return j["error"].value("message", "");
  return "unknown error";
}

// Gets `ref`, waiting in short steps so that Ctrl-C and the driver's close
// are noticed. False with `failure` set when Ray reports the object lost (or
// the wait was interrupted).
bool GetPatiently(stagekit_ray_bridge* h, const ray::ObjectRef<Blob>& ref,
                  std::shared_ptr<Blob>& value, std::string& failure, bool& interrupted) {
  for (;;) {
    try {
      value = ray::Get(ref, 100);
      return true;
    } catch (const ray::internal::RayTimeoutException&) {
      if (h->Cancelled() || h->closing.load()) {
        interrupted = true;
        failure = "interrupted";
        return false;
      }
    } catch (const ray::internal::RayException& e) {
      failure = e.what();
      return false;
    }
  }
}

// Fetches a stage's output into `output` without ever holding more than two
// windows of it: a reader actor beside the result hands it out window by
// window, each appended (and hashed) as it arrives, the next one already on
// its way. 0, or a stagekit code with `error`; `lost` when Ray lost the
// result or the reader (the stage may be run again).
int FetchInWindows(stagekit_ray_bridge* h, const ray::ObjectRef<Blob>& result,
                   const std::string& output, std::uint64_t size, std::uint64_t window,
                   const std::string& digest, std::string& error, bool& lost) {
  char* reply = nullptr;
  std::size_t reply_len = 0;
  stagekit_output* file = stagekit_output_begin(output.c_str(), &reply, &reply_len);
  if (file == nullptr) {
    error = ErrorMessage(reply, reply_len);
    return STAGEKIT_OUTPUT_ERROR;
  }
  auto creator = ray::Actor(&StagekitOutputReader::FactoryCreate);
  creator.SetResources({{"CPU", 0.01}});
  auto reader = creator.Remote(result);
  std::deque<ray::ObjectRef<Blob>> in_flight;
  std::uint64_t asked = 0, got = 0;
  auto ask = [&] {
    // Never move-construct an ObjectRef: Ray 2.60's move constructor drops the
    // count to zero before adding it back, which forgets that this process
    // owns the object, and the driver then dies in Ray's reference counter
    // ("Check failed: it->second.owned_by_us_") when the task returns. Its
    // move assignment adds first: construct empty, then assign.
    in_flight.emplace_back();
    in_flight.back() = reader.Task(&StagekitOutputReader::Read).Remote(asked, window);
    asked += window;
    h->helper_tasks++;
  };
  int rc = 0;
  while (asked < size && in_flight.size() < 2) ask();
  while (rc == 0 && !in_flight.empty()) {
    std::shared_ptr<Blob> chunk;
    bool interrupted = false;
    std::string failure;
    if (!GetPatiently(h, in_flight.front(), chunk, failure, interrupted)) {
      error =
          interrupted ? "interrupted while fetching the output" : "lost while fetching: " + failure;
      lost = !interrupted;
      rc = interrupted ? STAGEKIT_INTERRUPTED : STAGEKIT_STAGE_FAILED;
      break;
    }
    in_flight.pop_front();
    if (asked < size) ask();  // the next window travels while this one is written
    if (chunk->empty() && got < size) {
      error = "the reader returned nothing at byte " + std::to_string(got);
      lost = true;
      rc = STAGEKIT_STAGE_FAILED;
      break;
    }
    if (stagekit_output_append(file, chunk->data(), chunk->size(), &reply, &reply_len) != 0) {
      error = ErrorMessage(reply, reply_len);
      rc = STAGEKIT_OUTPUT_ERROR;
      break;
    }
    got += chunk->size();
    h->bytes_fetched += chunk->size();
  }
  in_flight.clear();
  try {
    reader.Kill(true);
  } catch (...) {
  }
  if (rc != 0) {
    stagekit_output_abort(file);
    return rc;
  }
  h->windows_fetched += (size + window - 1) / window;
  if (stagekit_output_commit(file, digest.c_str(), &reply, &reply_len) != 0) {
    error = ErrorMessage(reply, reply_len);
    lost = error.find("arrived as") != std::string::npos;  // corrupted on the way: run again
    return STAGEKIT_OUTPUT_ERROR;
  }
  stagekit_free(reply);
  return 0;
}

// Fetches a whole output (at most one window) into `output`. Same contract
// as FetchInWindows.
int FetchWhole(stagekit_ray_bridge* h, const ray::ObjectRef<Blob>& result,
               const std::string& output, const std::string& digest, std::string& error,
               bool& lost) {
  std::shared_ptr<Blob> whole;
  bool interrupted = false;
  std::string failure;
  if (!GetPatiently(h, result, whole, failure, interrupted)) {
    lost = !interrupted;
    error = interrupted ? "interrupted while its output was fetched" : failure;
    return interrupted ? STAGEKIT_INTERRUPTED : STAGEKIT_STAGE_FAILED;
  }
  const std::size_t header = FrameHeaderSize(*whole);
  const char* data = whole->data() + header;
  std::size_t size = header == 0 ? 0 : whole->size() - header;
  char hex[65];
  stagekit_sha256_hex(data, size, hex);
  if (header == 0 || digest != std::string("sha256:") + hex) {
    error = "the output bytes arrived corrupted (digest mismatch)";
    lost = true;
    return STAGEKIT_STAGE_FAILED;
  }
  if (int rc = WriteOutputAtomically(output, data, size, error); rc != 0) return rc;
  h->bytes_fetched += size;
  return 0;
}

json Completion(std::uint64_t ticket, int rc, json reply) {
  return json{{"ticket", ticket}, {"rc", rc}, {"reply", std::move(reply)}};
}

// Hands a finished stage's reply to whoever waits for it.
void Finish(stagekit_ray_bridge* h, StageRun& run, int rc, json reply) {
  Unwant(h, run.want);
  {
    std::lock_guard<std::mutex> lock(h->done_mu);
    if (run.sync) {
      h->done_sync[run.ticket] = Completion(run.ticket, rc, std::move(reply));
    } else {
      h->done_any.push_back(Completion(run.ticket, rc, std::move(reply)));
    }
  }
  h->done_cv.notify_all();
}

void FinishError(stagekit_ray_bridge* h, StageRun& run, int code, const std::string& message) {
  Finish(h, run, code, ErrorJson(code, message));
}

// A stage's output is made: its inputs' results are released once their
// last reader is done (once per stage, whatever retries follow), and its own
// result is kept for its readers, with its recipe.
void Made(stagekit_ray_bridge* h, StageRun& run) {
  const std::uint64_t bytes_out = run.status.value("bytes_out", std::uint64_t{0});
  std::lock_guard<std::mutex> lock(h->mu);
  if (!run.inputs_released) {
    run.inputs_released = true;
    const json& inputs = run.request.at("inputs");
    for (const auto& entry : run.names) {
      if (entry.size() < 3 || !entry[2].get<bool>()) continue;
      const std::string path = inputs.at(entry[0].get<std::string>()).get<std::string>();
      auto it = h->produced.find(path);
      if (it != h->produced.end() && --it->second.readers_left <= 0) {
        h->produced.erase(it);
        h->results_released++;
      }
    }
  }
  const int readers = run.task.value("readers", 0);
  if (readers > 0) {
    Produced made;
    made.frame = run.result;  // copy: the bridge never move-constructs a reference
    made.node = run.status.value("node", "");
    made.bytes = bytes_out;
    made.readers_left = readers;
    h->produced[run.output] = made;
    auto recipe = std::make_shared<Recipe>();
    recipe->payload = run.payload;
    recipe->payload.erase("inputs");
    // A warm stage is made again in a plain task, set up for that task.
    if (!run.warm_key.empty()) recipe->payload["cold"] = true;
    recipe->resources = run.resources;
    recipe->instance = run.request.value("instance", std::string("stage"));
    recipe->inputs = run.request.at("inputs");
    h->recipes[run.output] = std::move(recipe);
  }
}

// The last step of a stage that succeeded (its output fetched, if asked).
void Succeed(stagekit_ray_bridge* h, StageRun& run) {
  Made(h, run);
  run.status["attempt"] = run.attempt;
  Finish(h, run, 0, std::move(run.status));
}

bool LooksLost(const std::string& failure) {
  for (const char* word : {"lost", "Lost", "LOST", "OwnerDied", "owner died", "OWNER_DIED",
                           "unreconstructable", "Unreconstructable", "UNRECONSTRUCTABLE"}) {
    if (failure.find(word) != std::string::npos) return true;
  }
  return false;
}

// An attempt failed for a reason of the system's (a dead worker, node or
// actor, a lost result): try again after a pause, or give up after the last
// attempt.
void Retry(stagekit_ray_bridge* h, StageRun& run, std::string failure) {
  Unwant(h, run.want);
  if (run.actor) {
    DiscardActor(h, *run.actor);
    run.actor.reset();
  }
  // A result Ray lost (with its node, or its owner) may be an input's: the
  // next attempt makes the inputs it got by reference again.
  run.remake_inputs = run.remake_inputs || LooksLost(failure);
  run.last_failure = std::move(failure);
  h->retries++;
  if (run.attempt < run.max_attempts) {
    // Give the cluster a moment to notice a lost worker or node: 1 s, 2 s, ...
    run.phase = StageRun::Phase::kStarting;
    run.not_before = Clock::now() + std::chrono::seconds(run.attempt);
    return;
  }
  std::string hint;
  if (run.last_failure.rfind("its worker died", 0) == 0) {
    // A worker that cannot load the bridge or a stage library dies at start,
    // and only its node's logs say why.
    hint =
        "; the node's logs say why (<ray temp dir>/session_latest/logs/worker-*.err and "
        "raylet.out): a worker dies at start when it cannot load libstagekit_ray.so or a stage "
        "library from the driver's path, so every node needs them at that path (for a package "
        "shipped with `stagekit submit`: the same Ray temp dir on every node, e.g. the default "
        "/tmp/ray)";
  }
  FinishError(h, run, STAGEKIT_STAGE_FAILED,
              run.label + " failed on Ray after " + std::to_string(run.max_attempts) +
                  " attempts: " + run.last_failure + hint);
  run.phase = StageRun::Phase::kDone;
}

// Reads a submitted stage's request and task (see ray_bridge_api.h).
std::unique_ptr<StageRun> NewRun(std::uint64_t ticket, bool sync, json request, json task) {
  auto run = std::make_unique<StageRun>();
  run->ticket = ticket;
  run->sync = sync;
  run->label = Label(request);
  run->output = request.at("output").get<std::string>();
  for (const auto& [name, amount] : task.at("resources").items())
    run->resources[name] = amount.get<double>();
  run->fetch = task.value("fetch", true);
  run->artifact = task.value("artifact", std::string());
  run->s3_endpoint = task.value("s3_endpoint", std::string());
  run->window = std::max<std::uint64_t>(1, task.value("fetch_window", std::uint64_t{32} << 20));
  run->max_attempts = std::max(1, task.value("max_attempts", 3));
  run->max_actors = task.value("max_actors", 0);
  run->timeout_ms = task.value("timeout_ms", 0L);
  if (request.at("inputs").size() <= kMaxWarmInputs)
    run->warm_key = task.value("warm_key", std::string());
  run->payload = {{"libraries", task.at("libraries")},
                  {"output_name", Basename(run->output)},
                  {"request", request}};
  run->payload["request"].erase("inputs");
  run->payload["request"].erase("output");
  run->payload["request"]["executor"] = "ray";
  if (task.value("cold", false)) run->payload["cold"] = true;
  run->request = std::move(request);
  run->task = std::move(task);
  return run;
}

ray::ObjectRef<Blob> SubmitTask(const json& payload, const std::vector<ray::ObjectRef<Blob>>& refs,
                                const Resources& resources, const std::string& name) {
  static const auto kSubmit = SubmitTable(std::make_index_sequence<kMaxInputs + 1>{});
  return kSubmit[refs.size()](payload.dump(), refs, resources, name);
}

// Makes the output at `path` again from its recipe, and its own inputs
// passed by reference before it, however far up (each once per call, in
// `made`): the tasks are submitted at once, each with its inputs' new
// results as arguments, and Ray runs them in order. False when a recipe or
// an input file is missing.
bool Remake(stagekit_ray_bridge* h, const std::string& path,
            std::map<std::string, ray::ObjectRef<Blob>>& made, ray::ObjectRef<Blob>& result,
            std::string& error) {
  if (auto it = made.find(path); it != made.end()) {
    result = it->second;
    return true;
  }
  std::shared_ptr<const Recipe> recipe;
  {
    std::lock_guard<std::mutex> lock(h->mu);
    auto it = h->recipes.find(path);
    if (it != h->recipes.end()) recipe = it->second;
  }
  if (!recipe) {
    error = "no recipe to make '" + path + "' again";
    return false;
  }
  std::vector<ray::ObjectRef<Blob>> refs;
  json names = json::array();
  for (const auto& [name, in_json] : recipe->inputs.items()) {
    const std::string in = in_json.get<std::string>();
    refs.emplace_back();
    struct stat st {};
    bool has_recipe;
    {
      std::lock_guard<std::mutex> lock(h->mu);
      has_recipe = h->recipes.count(in) != 0;
    }
    if (has_recipe && ::stat(in.c_str(), &st) != 0) {
      if (!Remake(h, in, made, refs.back(), error)) return false;
      names.push_back(json::array({name, Basename(in), true}));
    } else {
      if (!InputRef(h, in, refs.back(), error)) return false;
      names.push_back(json::array({name, Basename(in)}));
    }
  }
  json payload = recipe->payload;
  payload["inputs"] = names;
  result = SubmitTask(payload, refs, recipe->resources, recipe->instance);
  h->tasks++;
  h->results_remade++;
  made.emplace(path, result);
  std::lock_guard<std::mutex> lock(h->mu);
  auto it = h->produced.find(path);
  if (it != h->produced.end()) it->second.frame = result;  // later readers get the new one
  return true;
}

// The inputs of an attempt: another stage's result of this run by reference
// (Ray resolves it on the node that runs the stage), a file put once
// otherwise. After a failed attempt a file in place is preferred: the result
// may have been lost with its node.
bool GatherInputs(stagekit_ray_bridge* h, StageRun& run, std::string& error) {
  run.refs.clear();
  run.names = json::array();
  const bool prefer_files = run.attempt > 1;
  std::map<std::string, ray::ObjectRef<Blob>> remade;
  for (const auto& [name, path_json] : run.request.at("inputs").items()) {  // sorted by name
    const std::string path = path_json.get<std::string>();
    std::optional<Produced> made;
    {
      std::lock_guard<std::mutex> lock(h->mu);
      auto it = h->produced.find(path);
      if (it != h->produced.end()) made = it->second;
    }
    struct stat st {};
    if (made && !(prefer_files && ::stat(path.c_str(), &st) == 0)) {
      run.refs.emplace_back();
      run.refs.back() = made->frame;
      if (run.remake_inputs && !Remake(h, path, remade, run.refs.back(), error)) {
        error =
            "input '" + name + "' of " + run.label + " was lost and cannot be made again: " + error;
        return false;
      }
      run.names.push_back(json::array({name, Basename(path), true}));
      h->inputs_by_reference++;
      h->bytes_by_reference += made->bytes;
      continue;
    }
    run.refs.emplace_back();
    if (!InputRef(h, path, run.refs.back(), error)) {
      error = "input '" + name + "' of " + run.label + ": " + error;
      return false;
    }
    run.names.push_back(json::array({name, Basename(path)}));
  }
  return true;
}

// Starts the next attempt of a stage: its task (or actor task) and the small
// header task beside its result. Leaves the stage starting when its warm
// actor is busy; finishes it when its inputs cannot be had.
void StartAttempt(stagekit_ray_bridge* h, StageRun& run) {
  static const auto kActorSubmit = ActorSubmitTable(std::make_index_sequence<kMaxWarmInputs + 1>{});
  if (!run.warm_key.empty()) {
    run.actor =
        TryAcquireActor(h, run.warm_key, run.resources, run.max_actors, run.fresh_actor, run.want);
    if (!run.actor) return;  // every actor of its key is busy: try again next round
  }
  ++run.attempt;
  std::string input_error;
  if (!GatherInputs(h, run, input_error)) {
    if (run.actor) ReleaseActor(h, run.warm_key, *run.actor);
    run.actor.reset();
    FinishError(h, run, STAGEKIT_INPUT_ERROR, input_error);
    run.phase = StageRun::Phase::kDone;
    return;
  }
  run.payload["request"]["attempt"] = run.attempt;
  run.payload["inputs"] = run.names;
  if (run.actor) {
    run.result = kActorSubmit[run.refs.size()](*run.actor, run.payload.dump(), run.refs);
  } else {
    FreeHeldResources(h, run.resources, run.want);
    run.result = SubmitTask(run.payload, run.refs, run.resources,
                            run.request.value("instance", std::string("stage")));
  }
  h->tasks++;
  if (run.attempt == 1) run.start = Clock::now();
  // First only the result's header comes back (the RunStats or the error),
  // cut off beside the result by a small task (Ray schedules a task near
  // its large arguments); the output follows only if it is fetched.
  auto head = ray::Task(&FrameHead);
  head.SetName("stagekit_frame_head");
  // No resources at all (a zero is refused): a header task never waits for a CPU that queued stages
  // hold.
  run.awaited = head.Remote(run.result);
  run.awaiting_head = true;
  h->helper_tasks++;
  run.phase = StageRun::Phase::kRunning;
}

// A stage whose output is made (and uploaded, if asked): to be fetched, or
// done.
void FetchOrSucceed(stagekit_ray_bridge* h, StageRun& run) {
  if (run.fetch) {
    // Its readers need not wait for the driver's copy: they get the result
    // by reference. The scheduler hears "made" now and the end later.
    if (!run.sync && run.task.value("readers", 0) > 0) {
      Made(h, run);
      if (!run.told_made) {
        run.told_made = true;
        json made = run.status;
        made["attempt"] = run.attempt;
        {
          std::lock_guard<std::mutex> lock(h->done_mu);
          json c = Completion(run.ticket, 0, std::move(made));
          c["made_only"] = true;
          h->done_any.push_back(std::move(c));
        }
        h->done_cv.notify_all();
      }
    }
    run.phase = StageRun::Phase::kFetching;
    return;
  }
  h->outputs_remote++;
  h->bytes_remote += run.status.value("bytes_out", std::uint64_t{0});
  Succeed(h, run);
  run.phase = StageRun::Phase::kDone;
}

// Uploads a made output to its artifact location from the node that holds
// it: a task with no resources and the result as its argument, which Ray
// leases on the node where the bytes are. The stage stays running until the
// upload ends, so that the run's end means its artifacts are in place.
void StartUpload(stagekit_ray_bridge* h, StageRun& run) {
  auto upload = ray::Task(&UploadOutput);
  upload.SetName("stagekit_upload_output");
  run.awaited =
      upload.Remote(json{{"uri", run.artifact}, {"endpoint", run.s3_endpoint}}.dump(), run.result);
  run.uploading = true;
  h->helper_tasks++;
}

// The upload ended: how is recorded in the stage's RunStats ("artifact");
// a failed upload does not fail the stage (its output is made and
// correct), the run reports it.
void OnUploaded(stagekit_ray_bridge* h, StageRun& run) {
  json artifact = {{"uri", run.artifact}};
  try {
    std::shared_ptr<Blob> frame = ray::Get(run.awaited, 100);
    const std::size_t header = FrameHeaderSize(*frame);
    json said = header == 0
                    ? json()
                    : json::parse(frame->data() + 8, frame->data() + header, nullptr, false);
    if (!said.is_object()) {
      artifact["error"] = "the upload task returned no status";
    } else if (said.contains("error")) {
      artifact["error"] = said["error"].value("message", std::string("failed"));
    } else {
      artifact["node"] = said.value("node", std::string());
      artifact["seconds"] = said.value("seconds", 0.0);
    }
  } catch (const ray::internal::RayTimeoutException&) {
    return;  // not here after all: next round
  } catch (const ray::internal::RayException& e) {
    artifact["error"] = std::string("the upload task failed: ") + e.what();
  }
  run.uploading = false;
  if (artifact.contains("error")) {
    h->uploads_failed++;
  } else {
    h->outputs_uploaded++;
    h->bytes_uploaded += run.status.value("bytes_out", std::uint64_t{0});
  }
  run.status["artifact"] = std::move(artifact);
  FetchOrSucceed(h, run);
}

// The awaited object of a running stage is ready: its header (or, when the
// header task failed, its result). Moves the stage on: done, to be fetched,
// to be tried again, or (header task failed) awaiting the result itself.
// Kept in one piece (a little over 80 lines): each branch is one transition
// of the stage's state machine, and they read best side by side.
void OnReady(stagekit_ray_bridge* h, StageRun& run) {
  if (run.uploading) {
    OnUploaded(h, run);
    return;
  }
  std::shared_ptr<Blob> frame;
  try {
    frame = ray::Get(run.awaited, 100);
  } catch (const ray::internal::RayTimeoutException&) {
    return;  // not here after all: next round
  } catch (const ray::internal::RayException&) {
    // When the stage task fails (its worker or node died), Ray's C++ worker
    // still runs the header task on the error and reports a decoding failure
    // of its own; the stage's result itself then says what happened.
    if (run.awaiting_head) {
      run.awaiting_head = false;
      run.awaited = run.result;  // copy-assign: never move-construct a reference
      return;
    }
    try {
      throw;
    } catch (const ray::internal::RayActorException& e) {
      Retry(h, run, std::string("its warm actor died (") + e.what() + ")");
    } catch (const ray::internal::RayWorkerException& e) {
      Retry(h, run, std::string("its worker died (") + e.what() + ")");
    } catch (const ray::internal::UnreconstructableException& e) {
      Retry(h, run, std::string("its result was lost with its node (") + e.what() + ")");
    } catch (const ray::internal::RayTaskException& e) {
      // An input Ray could not make again reaches the task as an error
      // object, which the C++ worker fails to decode as bytes.
      const std::string what = e.what();
      bool by_reference = false;
      for (const auto& entry : run.names) by_reference |= entry.size() > 2 && entry[2].get<bool>();
      if (by_reference && what.find("msgpack") != std::string::npos) {
        Retry(h, run,
              "an input it got by reference was lost (the task got an error in its place: " + what +
                  ")");
        return;
      }
      if (run.actor) DiscardActor(h, *run.actor);
      run.actor.reset();
      FinishError(h, run, STAGEKIT_INTERNAL,
                  run.label + ": the Ray task failed outside the stage: " + e.what() +
                      " (is libstagekit_ray.so loadable on every node?)");
      run.phase = StageRun::Phase::kDone;
    } catch (const ray::internal::RayException& e) {
      Retry(h, run, std::string("Ray reported: ") + e.what());
    }
    return;
  }
  const std::size_t header = FrameHeaderSize(*frame);
  if (header == 0) {
    // Not our frame: Ray's C++ Get decodes some system errors (a node that
    // died, for one) as if they were the task's value. Treat it as a system
    // failure, like a dead worker.
    std::string head;
    for (std::size_t i = 0; i < frame->size() && head.size() < 80; ++i) {
      char c = frame->data()[i];
      if (c >= 32 && c < 127) head.push_back(c);
    }
    Retry(h, run, "Ray returned an error the C++ API cannot decode (\"" + head + "\")");
    return;
  }
  json status = json::parse(frame->data() + 8, frame->data() + header);
  Unwant(h, run.want);
  if (run.actor) {
    ReleaseActor(h, run.warm_key, *run.actor);
    if (status.contains("metrics") && status["metrics"].contains("warm")) {
      status["metrics"]["warm"]["actor"] = stagekit::util::Hex(run.actor->ID());
      status["metrics"]["warm"]["new_actor"] = run.fresh_actor;
    }
    run.actor.reset();
  }
  if (status.contains("error")) {
    // The stage's own failure: never retried. Its code is in the JSON.
    Finish(h, run, STAGEKIT_STAGE_FAILED, std::move(status));
    run.phase = StageRun::Phase::kDone;
    return;
  }
  run.status = std::move(status);
  if (!run.artifact.empty()) {
    StartUpload(h, run);
    return;
  }
  FetchOrSucceed(h, run);
}

// A fetch thread: writes the outputs the driver asked for, a few at a time,
// so that the loop never waits for bytes.
void FetchLoop(stagekit_ray_bridge* h) {
  for (;;) {
    std::unique_ptr<StageRun> run;
    {
      std::unique_lock<std::mutex> lock(h->loop_mu);
      h->fetch_cv.wait(lock, [h] { return h->closing.load() || !h->to_fetch.empty(); });
      if (h->closing.load()) return;
      run = std::move(h->to_fetch.front());
      h->to_fetch.pop_front();
    }
    const std::uint64_t size = run->status.value("bytes_out", std::uint64_t{0});
    const std::string digest = run->status.value("output_digest", "");
    std::string error;
    bool lost = false;
    int rc = STAGEKIT_INTERNAL;
    try {
      rc = size > run->window
               ? FetchInWindows(h, run->result, run->output, size, run->window, digest, error, lost)
               : FetchWhole(h, run->result, run->output, digest, error, lost);
    } catch (const std::exception& e) {
      error = std::string("the fetch failed: ") + e.what();
    }
    if (rc == 0) {
      h->outputs_fetched++;
      Succeed(h, *run);
      run->phase = StageRun::Phase::kDone;
    } else if (lost) {
      Retry(h, *run, "its output was lost before the driver had it (" + error + ")");
    } else {
      FinishError(h, *run, rc, run->label + ": " + error);
      run->phase = StageRun::Phase::kDone;
    }
    if (run->phase == StageRun::Phase::kDone) continue;
    std::lock_guard<std::mutex> lock(h->loop_mu);
    h->submitted.push_back(std::move(run));  // to be tried again
    h->loop_cv.notify_all();
  }
}

// Runs one step of a stage; an exception (Ray refusing a task, say) fails
// that stage instead of ending the driver: the loop thread must never throw.
void Guarded(stagekit_ray_bridge* h, StageRun& run, void (*step)(stagekit_ray_bridge*, StageRun&)) {
  try {
    step(h, run);
  } catch (const std::exception& e) {
    if (run.actor) ReleaseActor(h, run.warm_key, *run.actor);
    run.actor.reset();
    FinishError(h, run, STAGEKIT_INTERNAL, run.label + ": the ray executor failed: " + e.what());
    run.phase = StageRun::Phase::kDone;
  }
}

// The driver's loop: starts attempts, awaits every running stage's header at
// once with ray::Wait, enforces timeouts and Ctrl-C, and hands outputs to be
// fetched to the fetch threads. One thread, however many stages run.
// Moves newly submitted stages into `runs`; false once the bridge closes.
bool TakeSubmitted(stagekit_ray_bridge* h, std::vector<std::unique_ptr<StageRun>>& runs,
                   bool& busy) {
  std::unique_lock<std::mutex> lock(h->loop_mu);
  if (h->closing.load()) return false;
  busy = busy || !h->submitted.empty();
  while (!h->submitted.empty()) {
    runs.push_back(std::move(h->submitted.front()));
    h->submitted.pop_front();
  }
  return true;
}

// Ends what was interrupted or ran past its time, and starts the attempts
// that are due; true when a stage still waits for an actor or a retry.
bool StopOrStart(stagekit_ray_bridge* h, std::vector<std::unique_ptr<StageRun>>& runs) {
  const bool interrupted = h->Cancelled();
  const auto now = Clock::now();
  bool waiting = false;
  for (auto& run : runs) {
    // The stage's time runs from its first submission: waiting for a busy
    // warm actor before that is queueing, not running.
    const bool late = run->timeout_ms > 0 && run->attempt > 0 && !run->uploading &&
                      now - run->start > std::chrono::milliseconds(run->timeout_ms);
    if (interrupted) {
      if (run->actor) DiscardActor(h, *run->actor);
      run->actor.reset();
      FinishError(h, *run, STAGEKIT_INTERRUPTED,
                  run->label + " was interrupted while running on Ray");
      run->phase = StageRun::Phase::kDone;
    } else if (late && run->actor) {
      // Unlike a task, an actor can be stopped: kill it (a new one replaces it).
      DiscardActor(h, *run->actor);
      run->actor.reset();
      FinishError(h, *run, STAGEKIT_TIMEOUT,
                  run->label + " timed out after " + std::to_string(run->timeout_ms) +
                      "ms on Ray; its warm actor was killed and will be replaced");
      run->phase = StageRun::Phase::kDone;
    } else if (late && run->phase == StageRun::Phase::kStarting) {
      FinishError(h, *run, STAGEKIT_TIMEOUT,
                  run->label + " timed out after " + std::to_string(run->timeout_ms) +
                      "ms on Ray while waiting to be tried again (attempt " +
                      std::to_string(run->attempt) + " failed: " + run->last_failure + ")");
      run->phase = StageRun::Phase::kDone;
    } else if (late) {
      FinishError(h, *run, STAGEKIT_TIMEOUT,
                  run->label + " timed out after " + std::to_string(run->timeout_ms) +
                      "ms on Ray (the C++ API cannot cancel the task; it runs until it ends "
                      "or its cluster stops)");
      run->phase = StageRun::Phase::kDone;
    } else if (run->phase == StageRun::Phase::kStarting) {
      if (run->not_before <= now) Guarded(h, *run, StartAttempt);
      if (run->phase == StageRun::Phase::kStarting) waiting = true;
    }
  }
  return waiting;
}

// One ray::Wait over every running stage's awaited object, then OnReady for
// each that is ready; false when nothing was running.
bool AwaitReady(stagekit_ray_bridge* h, std::vector<std::unique_ptr<StageRun>>& runs, bool& busy) {
  std::vector<std::string> ids;
  std::vector<StageRun*> running;
  for (auto& run : runs) {
    if (run->phase != StageRun::Phase::kRunning) continue;
    ids.push_back(run->awaited.ID());
    running.push_back(run.get());
  }
  if (ids.empty()) return false;
  auto* runtime = ray::internal::GetRayRuntime().get();
  std::vector<bool> ready;
  try {
    // Block until one is ready (or a short while passed, to notice
    // Ctrl-C, timeouts and new stages), then take every one ready now.
    ready = runtime->Wait(ids, 1, busy ? 2 : 10);
    busy = false;
    if (std::find(ready.begin(), ready.end(), true) != ready.end() && ids.size() > 1)
      ready = runtime->Wait(ids, static_cast<int>(ids.size()), 0);
  } catch (const std::exception&) {
    ready.assign(ids.size(), true);  // let Get say what is wrong with each
  }
  for (std::size_t i = 0; i < running.size() && i < ready.size(); ++i) {
    if (ready[i]) Guarded(h, *running[i], OnReady);
  }
  return true;
}

// Hands the stages whose outputs are to be fetched to the fetchers and drops
// the finished ones; a round that finished something is busy.
void HandOver(stagekit_ray_bridge* h, std::vector<std::unique_ptr<StageRun>>& runs, bool& busy,
              std::unique_lock<std::mutex>& lock) {
  std::vector<std::unique_ptr<StageRun>> fetch;
  for (auto& run : runs) {
    if (run->phase == StageRun::Phase::kFetching) fetch.push_back(std::move(run));
  }
  for (const auto& run : runs)
    busy = busy || run == nullptr || run->phase == StageRun::Phase::kDone;
  runs.erase(std::remove_if(runs.begin(), runs.end(),
                            [](const std::unique_ptr<StageRun>& r) {
                              return r == nullptr || r->phase == StageRun::Phase::kDone;
                            }),
             runs.end());
  lock.lock();
  for (auto& run : fetch) h->to_fetch.push_back(std::move(run));
  if (!fetch.empty()) h->fetch_cv.notify_all();
}

// The bridge's one driver thread: every stage in flight, from submission to
// its result, without a thread per stage.
void Loop(stagekit_ray_bridge* h) {
  std::vector<std::unique_ptr<StageRun>> runs;  // starting or running
  // Whether the last round moved anything on: the scheduler then submits
  // the stages that waited for it within moments, and a long wait would
  // hold them up (no new submission can end a Wait).
  bool busy = false;
  while (TakeSubmitted(h, runs, busy)) {
    const bool waiting = StopOrStart(h, runs);
    const bool awaited = AwaitReady(h, runs, busy);
    std::unique_lock<std::mutex> lock(h->loop_mu, std::defer_lock);
    HandOver(h, runs, busy, lock);
    if (!awaited && !h->closing.load()) {
      h->loop_cv.wait_for(lock, std::chrono::milliseconds(waiting ? 5 : 10),
                          [h] { return h->closing.load() || !h->submitted.empty(); });
    }
  }
}

void Submit(stagekit_ray_bridge* h, std::unique_ptr<StageRun> run) {
  std::lock_guard<std::mutex> lock(h->loop_mu);
  if (!h->loop.joinable()) {
    h->loop = std::thread(Loop, h);
    for (int i = 0; i < kFetchThreads; ++i) h->fetchers.emplace_back(FetchLoop, h);
  }
  h->submitted.push_back(std::move(run));
  h->loop_cv.notify_all();
}

// Checks what a stage asks for before it is submitted: an error JSON, or
// null when it can go.
json Refuse(const json& request) {
  const json& inputs = request.at("inputs");
  if (inputs.size() > kMaxInputs) {
    return ErrorJson(STAGEKIT_INPUT_ERROR,
                     Label(request) + " has " + std::to_string(inputs.size()) +
                         " inputs; the ray executor passes at most " + std::to_string(kMaxInputs) +
                         " per stage: merge inputs in an intermediate stage");
  }
  return nullptr;
}

}  // namespace

extern "C" {

int stagekit_ray_bridge_open(const char* config, size_t config_len, stagekit_ray_bridge** handle,
                             char** out, size_t* out_len) {
  try {
    (void)kRegistered;
    json c = json::parse(std::string(config, config_len));
    ray::RayConfig rc;
    rc.address = c.at("address").get<std::string>();
    for (const auto& p : c.at("code_search_path"))
      rc.code_search_path.push_back(p.get<std::string>());
    ray::Init(rc);
    *handle = new stagekit_ray_bridge();
    return Emit("{}", 0, out, out_len);
  } catch (const std::exception& e) {
    return EmitError(STAGEKIT_INTERNAL, std::string("cannot connect to Ray: ") + e.what(), out,
                     out_len);
  }
}

int stagekit_ray_bridge_submit(stagekit_ray_bridge* h, uint64_t ticket, const char* request,
                               size_t request_len, const char* task, size_t task_len) {
  try {
    json req = json::parse(std::string(request, request_len));
    if (json refused = Refuse(req); !refused.is_null()) {
      std::lock_guard<std::mutex> lock(h->done_mu);
      h->done_any.push_back(
          Completion(ticket, STAGEKIT_INPUT_ERROR, refused));  // Refuse: input errors only
      h->done_cv.notify_all();
      return 0;
    }
    Submit(h, NewRun(ticket, false, std::move(req), json::parse(std::string(task, task_len))));
    return 0;
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(h->done_mu);
    h->done_any.push_back(
        Completion(ticket, STAGEKIT_INTERNAL,
                   ErrorJson(STAGEKIT_INTERNAL, std::string("ray executor: ") + e.what())));
    h->done_cv.notify_all();
    return 0;
  }
}

int stagekit_ray_bridge_wait(stagekit_ray_bridge* h, int timeout_ms, char** out, size_t* out_len) {
  json done = json::array();
  {
    std::unique_lock<std::mutex> lock(h->done_mu);
    h->done_cv.wait_for(lock, std::chrono::milliseconds(std::max(0, timeout_ms)),
                        [h] { return !h->done_any.empty(); });
    while (!h->done_any.empty()) {
      done.push_back(std::move(h->done_any.front()));
      h->done_any.pop_front();
    }
  }
  return Emit(done.dump(), 0, out, out_len);
}

int stagekit_ray_bridge_run(stagekit_ray_bridge* h, const char* request, size_t request_len,
                            const char* task, size_t task_len, char** out, size_t* out_len) {
  try {
    json req = json::parse(std::string(request, request_len));
    if (json refused = Refuse(req); !refused.is_null()) {
      return Emit(refused.dump(), STAGEKIT_INPUT_ERROR, out, out_len);
    }
    const std::uint64_t ticket = h->next_sync_ticket++;
    Submit(h, NewRun(ticket, true, std::move(req), json::parse(std::string(task, task_len))));
    std::unique_lock<std::mutex> lock(h->done_mu);
    h->done_cv.wait(lock, [h, ticket] { return h->done_sync.count(ticket) != 0; });
    json done = std::move(h->done_sync[ticket]);
    h->done_sync.erase(ticket);
    lock.unlock();
    return Emit(done["reply"].dump(), done["rc"].get<int>(), out, out_len);
  } catch (const std::exception& e) {
    return EmitError(STAGEKIT_INTERNAL, std::string("ray executor: ") + e.what(), out, out_len);
  }
}

int stagekit_ray_bridge_stats(stagekit_ray_bridge* h, char** out, size_t* out_len) {
  std::size_t alive = 0;
  {
    std::lock_guard<std::mutex> lock(h->actors_mu);
    alive = h->live_actors.size();
  }
  json s = {{"objects_put", h->objects_put.load()},
            {"bytes_put", h->bytes_put.load()},
            {"tasks_submitted", h->tasks.load()},
            {"helper_tasks", h->helper_tasks.load()},
            {"system_retries", h->retries.load()},
            {"actors_started", h->actors_started.load()},
            {"actors_alive", alive},
            {"outputs_fetched", h->outputs_fetched.load()},
            {"bytes_fetched", h->bytes_fetched.load()},
            {"windows_fetched", h->windows_fetched.load()},
            {"results_released", h->results_released.load()},
            {"results_remade", h->results_remade.load()},
            {"outputs_uploaded_from_nodes", h->outputs_uploaded.load()},
            {"bytes_uploaded_from_nodes", h->bytes_uploaded.load()},
            {"uploads_failed", h->uploads_failed.load()},
            {"outputs_left_on_cluster", h->outputs_remote.load()},
            {"bytes_left_on_cluster", h->bytes_remote.load()},
            {"inputs_by_reference", h->inputs_by_reference.load()},
            {"bytes_by_reference", h->bytes_by_reference.load()}};
  return Emit(s.dump(), 0, out, out_len);
}

void stagekit_ray_bridge_set_cancel(stagekit_ray_bridge* handle, int (*cancelled)(const void*),
                                    const void* ctx) {
  if (handle == nullptr) return;
  handle->cancelled = cancelled;
  handle->cancel_ctx = ctx;
}

void stagekit_ray_bridge_close(stagekit_ray_bridge* handle) {
  if (handle == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(handle->loop_mu);
    handle->closing = true;
  }
  handle->loop_cv.notify_all();
  handle->fetch_cv.notify_all();
  if (handle->loop.joinable()) handle->loop.join();
  for (std::thread& t : handle->fetchers) t.join();
  handle->submitted.clear();
  handle->to_fetch.clear();
  {
    std::lock_guard<std::mutex> lock(handle->mu);
    handle->inputs.clear();  // release the object references before the driver goes
    handle->produced.clear();
    handle->recipes.clear();
  }
  std::map<std::string, WarmHandle> actors;
  {
    std::lock_guard<std::mutex> lock(handle->actors_mu);
    actors.swap(handle->live_actors);
    handle->idle_actors.clear();
  }
  for (auto& [id, actor] : actors) {
    try {
      actor.Kill(true);
    } catch (...) {
    }
  }
  delete handle;
  try {
    ray::Shutdown();
  } catch (...) {
  }
}

}  // extern "C"
