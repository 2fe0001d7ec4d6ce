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
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ray/api.h>
#include <nlohmann/json.hpp>

#include "ray_bridge_api.h"
#include "stagekit/c_api.h"

namespace {

using Bytes = std::vector<char>;
using nlohmann::json;

// Exit codes, mirrored from stagekit::Code (status.h).
constexpr int kStageFailed = 1;
constexpr int kInputError = 5;
constexpr int kOutputError = 7;
constexpr int kTimeout = 8;
constexpr int kInternal = 70;
constexpr int kInterrupted = 130;
constexpr char kMagic[4] = {'S', 'K', 'R', '1'};
constexpr std::size_t kMaxInputs = 48;

const char* CodeName(int code) {
  switch (code) {
    case kStageFailed:
      return "stage_failed";
    case kInputError:
      return "input_error";
    case kOutputError:
      return "output_error";
    case kTimeout:
      return "timeout";
    case kInterrupted:
      return "interrupted";
    default:
      return "internal";
  }
}

json ErrorJson(int code, const std::string& message) {
  return json{{"error", {{"code", CodeName(code)}, {"message", message}}}};
}

int Emit(const std::string& text, int rc, char** out, std::size_t* out_len) {
  *out = static_cast<char*>(std::malloc(text.size() + 1));
  if (*out == nullptr) return kInternal;
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

bool ReadFile(const std::string& path, Bytes& out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  // st_size is a hint only: files under /proc report 0.
  out.clear();
  out.reserve(::fstat(fd, &st) == 0 && st.st_size > 0 ? static_cast<std::size_t>(st.st_size)
                                                      : 4096);
  char chunk[1 << 16];
  bool ok = true;
  for (;;) {
    ssize_t r = ::read(fd, chunk, sizeof(chunk));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) ok = false;
    if (r <= 0) break;
    out.insert(out.end(), chunk, chunk + r);
  }
  ::close(fd);
  return ok;
}

std::string Basename(const std::string& path) {
  std::size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// ---------------------------------------------------------------------------
// Worker side

// A frame: magic, 4-byte little-endian length of the status JSON, the status
// JSON (RunStats or an error), then the output bytes.
Bytes Frame(const std::string& status, const Bytes* output) {
  const std::size_t out_size = output == nullptr ? 0 : output->size();
  Bytes frame(8 + status.size() + out_size);
  std::memcpy(frame.data(), kMagic, sizeof(kMagic));
  auto n = static_cast<std::uint32_t>(status.size());
  for (int i = 0; i < 4; ++i) frame[4 + i] = static_cast<char>((n >> (8 * i)) & 0xff);
  if (!status.empty()) std::memcpy(frame.data() + 8, status.data(), status.size());
  if (out_size > 0) std::memcpy(frame.data() + 8 + status.size(), output->data(), out_size);
  return frame;
}

Bytes ErrorFrame(int code, const std::string& message) {
  return Frame(ErrorJson(code, message).dump(), nullptr);
}

// The size of a frame's header (magic, length, status JSON), or 0 when
// `frame` is not one of ours.
std::size_t FrameHeaderSize(const Bytes& frame) {
  if (frame.size() < 8 || std::memcmp(frame.data(), kMagic, 4) != 0) return 0;
  std::uint32_t n = 0;
  for (int i = 0; i < 4; ++i)
    n |= static_cast<std::uint32_t>(static_cast<unsigned char>(frame[4 + i])) << (8 * i);
  return 8 + static_cast<std::size_t>(n) <= frame.size() ? 8 + n : 0;
}

// Run beside a stage's result when the driver does not fetch the output: the
// result's header alone (its RunStats or error), so that only those bytes
// reach the driver.
Bytes FrameHead(Bytes frame) {
  const std::size_t header = FrameHeaderSize(frame);
  if (header == 0) return frame;  // not ours: the driver reports what it is
  frame.resize(header);
  return frame;
}

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

Bytes RunImpl(const std::string& payload, const std::vector<const Bytes*>& inputs) {
  std::string scratch;
  try {
    json p = json::parse(payload);
    std::string lib_error = LoadLibraries(p.at("libraries"));
    if (!lib_error.empty()) return Frame(lib_error, nullptr);

    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/stagekit-task-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      return ErrorFrame(kInternal, "cannot create a scratch directory on " + NodeName() + ": " +
                                       std::strerror(errno));
    }
    scratch = tmpl;
    json request = p.at("request");
    const json& names = p.at("inputs");
    json in = json::object();
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      // One directory per input keeps equal basenames apart.
      std::string dir = scratch + "/in" + std::to_string(i);
      std::string path = dir + "/" + names[i][1].get<std::string>();
      // An input passed by reference is another stage's result: a frame
      // whose bytes after the header are that stage's output.
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
                                 "': " + err);
      }
      ::close(fd);
      in[names[i][0].get<std::string>()] = path;
    }
    request["inputs"] = in;
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
    Bytes frame;
    if (rc != 0) {
      json err = json::parse(status);
      err["error"]["message"] =
          err["error"]["message"].get<std::string>() + " (on Ray node " + NodeName() + ")";
      frame = Frame(err.dump(), nullptr);
    } else {
      Bytes bytes;
      if (!ReadFile(output, bytes))
        throw std::runtime_error("cannot read back the output: " +
                                 std::string(std::strerror(errno)));
      json stats = json::parse(status);
      stats["node"] = NodeName();
      frame = Frame(stats.dump(), &bytes);
    }
    ::nftw(scratch.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
    return frame;
  } catch (const std::exception& e) {
    if (!scratch.empty()) ::nftw(scratch.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
    return ErrorFrame(kInternal, std::string("ray task on ") + NodeName() + ": " + e.what());
  }
}

template <std::size_t>
using AlwaysBytes = Bytes;

template <typename Seq>
struct Task;
template <std::size_t... I>
struct Task<std::index_sequence<I...>> {
  static Bytes Run(std::string payload, AlwaysBytes<I>... inputs) {
    return RunImpl(payload, std::vector<const Bytes*>{&inputs...});
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
  Bytes Run(std::string payload, AlwaysBytes<I>... inputs) {
    return RunImpl(payload, std::vector<const Bytes*>{&inputs...});
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
  static StagekitOutputReader* FactoryCreate(Bytes frame) {
    return new StagekitOutputReader(std::move(frame));
  }
  // Up to `length` bytes of the output from `offset`.
  Bytes Read(std::uint64_t offset, std::uint64_t length) {
    const std::size_t header = FrameHeaderSize(frame_);
    if (header == 0) return Bytes();
    const std::size_t size = frame_.size() - header;
    const std::size_t begin =
        header + static_cast<std::size_t>(std::min<std::uint64_t>(offset, size));
    const std::size_t end =
        begin + static_cast<std::size_t>(std::min<std::uint64_t>(length, frame_.size() - begin));
    return Bytes(frame_.begin() + static_cast<std::ptrdiff_t>(begin),
                 frame_.begin() + static_cast<std::ptrdiff_t>(end));
  }

 private:
  explicit StagekitOutputReader(Bytes frame) : frame_(std::move(frame)) {}
  Bytes frame_;
};

bool RegisterFrameHead() {
  auto& functions = ray::internal::FunctionManager::Instance();
  functions.RegisterRemoteFunction("stagekit_frame_head", &FrameHead);
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
using SubmitFn = ray::ObjectRef<Bytes> (*)(const std::string&,
                                           const std::vector<ray::ObjectRef<Bytes>>&,
                                           const Resources&, const std::string&);

template <std::size_t... I>
ray::ObjectRef<Bytes> SubmitWith(const std::string& payload,
                                 const std::vector<ray::ObjectRef<Bytes>>& refs,
                                 const Resources& resources, const std::string& name,
                                 std::index_sequence<I...>) {
  auto caller = ray::Task(&Task<std::index_sequence<I...>>::Run);
  caller.SetName(name);
  if (!resources.empty()) caller.SetResources(resources);
  return caller.Remote(payload, refs[I]...);
}

template <std::size_t N>
ray::ObjectRef<Bytes> Submit(const std::string& payload,
                             const std::vector<ray::ObjectRef<Bytes>>& refs,
                             const Resources& resources, const std::string& name) {
  return SubmitWith(payload, refs, resources, name, std::make_index_sequence<N>{});
}

template <std::size_t... N>
std::array<SubmitFn, sizeof...(N)> SubmitTable(std::index_sequence<N...>) {
  return {&Submit<N>...};
}

using WarmHandle = ray::ActorHandle<StagekitWarmActor>;
using ActorSubmitFn = ray::ObjectRef<Bytes> (*)(WarmHandle&, const std::string&,
                                                const std::vector<ray::ObjectRef<Bytes>>&);

template <std::size_t... I>
ray::ObjectRef<Bytes> ActorSubmitWith(WarmHandle& actor, const std::string& payload,
                                      const std::vector<ray::ObjectRef<Bytes>>& refs,
                                      std::index_sequence<I...>) {
  return actor.Task(WarmMethod(std::index_sequence<I...>{})).Remote(payload, refs[I]...);
}

template <std::size_t N>
ray::ObjectRef<Bytes> ActorSubmit(WarmHandle& actor, const std::string& payload,
                                  const std::vector<ray::ObjectRef<Bytes>>& refs) {
  return ActorSubmitWith(actor, payload, refs, std::make_index_sequence<N>{});
}

template <std::size_t... N>
std::array<ActorSubmitFn, sizeof...(N)> ActorSubmitTable(std::index_sequence<N...>) {
  return {&ActorSubmit<N>...};
}

std::string Hex(const std::string& bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
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
  ray::ObjectRef<Bytes> frame;
  std::string node;
  std::uint64_t bytes = 0;
  int readers_left = 0;  // stages still to read it; released at zero
};

struct stagekit_ray_bridge {
  std::mutex mu;
  std::map<InputKey, ray::ObjectRef<Bytes>> inputs;
  std::map<std::string, Produced> produced;  // by output path, guarded by mu
  std::atomic<std::uint64_t> objects_put{0}, bytes_put{0}, tasks{0}, retries{0};
  // The data plane: outputs fetched into the output folder and their bytes,
  // outputs left on the cluster, and inputs passed by reference.
  std::atomic<std::uint64_t> outputs_fetched{0}, bytes_fetched{0}, outputs_remote{0},
      bytes_remote{0}, inputs_by_reference{0}, bytes_by_reference{0}, windows_fetched{0},
      results_released{0}, helper_tasks{0};
  // Warm actors: idle ones by key; every live one, to kill on close. An actor
  // serves one Run at a time; a key has at most as many actors as Runs at
  // once, and no more than the cluster can hold (max_actors).
  std::mutex actors_mu;
  std::map<std::string, std::vector<WarmHandle>> idle_actors;
  std::map<std::string, WarmHandle> live_actors;  // by actor id
  std::map<std::string, int> live_per_key;
  std::map<std::string, std::string> key_of;     // actor id -> key
  std::map<std::string, Resources> held_by_key;  // what a key's actors hold
  std::condition_variable actor_idle;            // an actor went idle or away
  // Who is waiting for, or using, a resource an actor may hold: plain tasks
  // (key "") and actors being started, by a serial number.
  std::map<std::uint64_t, std::pair<std::string, Resources>> wanting;
  std::uint64_t next_want = 1;
  std::atomic<std::uint64_t> actors_started{0};
};

namespace {

// The object reference of an input file, put into the object store the first
// time this file (same path, inode, size and mtime) is seen.
bool InputRef(stagekit_ray_bridge* h, const std::string& path, ray::ObjectRef<Bytes>& ref,
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
  Bytes bytes;
  if (!ReadFile(path, bytes)) {
    error = "cannot read '" + path + "': " + std::strerror(errno);
    return false;
  }
  ref = ray::Put(bytes);
  h->objects_put++;
  h->bytes_put += bytes.size();
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
// until its WantGuard ends; an actor released meanwhile that holds any of
// them goes away instead of idling. Called with actors_mu held; 0 when only
// CPUs are wanted.
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
class WantGuard {
 public:
  explicit WantGuard(stagekit_ray_bridge* h) : h_(h) {}
  ~WantGuard() {
    if (id_ == 0) return;
    std::lock_guard<std::mutex> lock(h_->actors_mu);
    h_->wanting.erase(id_);
  }
  WantGuard(const WantGuard&) = delete;
  WantGuard& operator=(const WantGuard&) = delete;
  std::uint64_t id_ = 0;

 private:
  stagekit_ray_bridge* h_;
};

// A plain task that needs a GPU or custom resource: make idle warm actors
// that hold it let go first, and busy ones as soon as they are done.
void FreeHeldResources(stagekit_ray_bridge* h, const Resources& resources, WantGuard& want) {
  std::vector<WarmHandle> doomed;
  {
    std::lock_guard<std::mutex> lock(h->actors_mu);
    want.id_ = Want(h, std::string(), resources);
    doomed = EvictIdleHolders(h, std::string(), resources);
  }
  KillActors(doomed);
}

// An idle actor of `key`, or a new one when fewer than `max_actors` (0: no
// limit) are alive; otherwise waits for one to go idle. nullopt when
// interrupted while waiting.
std::optional<WarmHandle> AcquireActor(stagekit_ray_bridge* h, const std::string& key,
                                       const Resources& resources, int max_actors, bool& fresh,
                                       WantGuard& want) {
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
    std::unique_lock<std::mutex> lock(h->actors_mu);
    for (;;) {
      auto it = h->idle_actors.find(key);
      if (it != h->idle_actors.end() && !it->second.empty()) {
        WarmHandle actor = it->second.back();
        it->second.pop_back();
        fresh = false;
        return actor;
      }
      if (max_actors <= 0 || h->live_per_key[key] < max_actors) break;
      if (stagekit_interrupted() != 0) return std::nullopt;
      h->actor_idle.wait_for(lock, std::chrono::milliseconds(100));
    }
    ++h->live_per_key[key];  // counted now, so that no other thread starts one too many
    h->held_by_key[key] = held;
    want.id_ = Want(h, key, held);
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
  h->actor_idle.notify_all();
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
  h->actor_idle.notify_all();
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

// Gets `ref`, waiting in short steps so that Ctrl-C is noticed. False with
// `failure` set when Ray reports the object lost (or the wait interrupted).
bool GetPatiently(const ray::ObjectRef<Bytes>& ref, std::shared_ptr<Bytes>& value,
                  std::string& failure, bool& interrupted) {
  for (;;) {
    try {
      value = ray::Get(ref, 100);
      return true;
    } catch (const ray::internal::RayTimeoutException&) {
      if (stagekit_interrupted() != 0) {
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
// its way. 0, or a stagekit code
// with `error`; `lost` when Ray lost the result or the reader (the stage may be run again).
int FetchInWindows(stagekit_ray_bridge* h, const ray::ObjectRef<Bytes>& result,
                   const std::string& output, std::uint64_t size, std::uint64_t window,
                   const std::string& digest, std::string& error, bool& lost) {
  char* reply = nullptr;
  std::size_t reply_len = 0;
  stagekit_output* file = stagekit_output_begin(output.c_str(), &reply, &reply_len);
  if (file == nullptr) {
    error = ErrorMessage(reply, reply_len);
    return kOutputError;
  }
  auto creator = ray::Actor(&StagekitOutputReader::FactoryCreate);
  creator.SetResources({{"CPU", 0.01}});
  auto reader = creator.Remote(result);
  std::deque<ray::ObjectRef<Bytes>> in_flight;
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
    std::shared_ptr<Bytes> chunk;
    bool interrupted = false;
    std::string failure;
    if (!GetPatiently(in_flight.front(), chunk, failure, interrupted)) {
      error =
          interrupted ? "interrupted while fetching the output" : "lost while fetching: " + failure;
      lost = !interrupted;
      rc = interrupted ? kInterrupted : kStageFailed;
      break;
    }
    in_flight.pop_front();
    if (asked < size) ask();  // the next window travels while this one is written
    if (chunk->empty() && got < size) {
      error = "the reader returned nothing at byte " + std::to_string(got);
      lost = true;
      rc = kStageFailed;
      break;
    }
    if (stagekit_output_append(file, chunk->data(), chunk->size(), &reply, &reply_len) != 0) {
      error = ErrorMessage(reply, reply_len);
      rc = kOutputError;
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
    return kOutputError;
  }
  stagekit_free(reply);
  return 0;
}

int RunStage(stagekit_ray_bridge* h, const json& request, const json& task, char** out,
             std::size_t* out_len) {
  const std::string label = Label(request);
  const json& inputs = request.at("inputs");
  if (inputs.size() > kMaxInputs) {
    return EmitError(kInputError,
                     label + " has " + std::to_string(inputs.size()) +
                         " inputs; the ray executor passes at most " + std::to_string(kMaxInputs) +
                         " per stage: merge inputs in an intermediate stage",
                     out, out_len);
  }
  // The inputs: another stage's result of this run by reference (Ray
  // resolves it on the node that runs the stage), a file put once otherwise.
  // After a failed attempt a file in place is preferred: the result may have
  // been lost with its node.
  std::vector<ray::ObjectRef<Bytes>> refs;
  json names = json::array();
  auto gather = [&](bool prefer_files, std::string& error) {
    refs.clear();
    names = json::array();
    for (const auto& [name, path_json] : inputs.items()) {  // sorted by name
      const std::string path = path_json.get<std::string>();
      std::optional<Produced> made;
      {
        std::lock_guard<std::mutex> lock(h->mu);
        auto it = h->produced.find(path);
        if (it != h->produced.end()) made = it->second;
      }
      struct stat st {};
      if (made && !(prefer_files && ::stat(path.c_str(), &st) == 0)) {
        refs.push_back(made->frame);
        names.push_back(json::array({name, Basename(path), true}));
        h->inputs_by_reference++;
        h->bytes_by_reference += made->bytes;
        continue;
      }
      ray::ObjectRef<Bytes> ref;
      if (!InputRef(h, path, ref, error)) {
        error = "input '" + name + "' of " + label + ": " + error;
        return false;
      }
      refs.push_back(ref);
      names.push_back(json::array({name, Basename(path)}));
    }
    return true;
  };
  Resources resources;
  for (const auto& [name, amount] : task.at("resources").items())
    resources[name] = amount.get<double>();
  const std::string output = request.at("output").get<std::string>();
  const bool fetch = task.value("fetch", true);
  const std::uint64_t window =
      std::max<std::uint64_t>(1, task.value("fetch_window", std::uint64_t{32} << 20));
  json payload = {
      {"libraries", task.at("libraries")}, {"output_name", Basename(output)}, {"request", request}};
  payload["request"].erase("inputs");
  payload["request"].erase("output");
  payload["request"]["executor"] = "ray";

  static const auto kSubmit = SubmitTable(std::make_index_sequence<kMaxInputs + 1>{});
  static const auto kActorSubmit = ActorSubmitTable(std::make_index_sequence<kMaxWarmInputs + 1>{});
  if (task.value("cold", false)) payload["cold"] = true;
  const std::string warm_key =
      inputs.size() <= kMaxWarmInputs ? task.value("warm_key", std::string()) : std::string();
  const int max_attempts = std::max(1, task.value("max_attempts", 3));
  const long timeout_ms = task.value("timeout_ms", 0L);
  const auto start = std::chrono::steady_clock::now();
  std::string last_failure;
  for (int attempt = 1; attempt <= max_attempts; ++attempt) {
    if (attempt > 1) {
      // Give the cluster a moment to notice a lost worker or node before
      // trying again: 1 s, 2 s, ... (interruptible).
      for (int i = 0; i < 10 * (attempt - 1) && stagekit_interrupted() == 0; ++i) {
        ::usleep(100000);
      }
    }
    payload["request"]["attempt"] = attempt;
    std::string input_error;
    if (!gather(attempt > 1, input_error)) return EmitError(kInputError, input_error, out, out_len);
    payload["inputs"] = names;
    WantGuard want(h);
    std::optional<WarmHandle> actor;
    bool fresh_actor = false;
    ray::ObjectRef<Bytes> result;
    if (!warm_key.empty()) {
      actor = AcquireActor(h, warm_key, resources, task.value("max_actors", 0), fresh_actor, want);
      if (!actor) {
        return EmitError(kInterrupted, label + " was interrupted while waiting for a warm actor",
                         out, out_len);
      }
      result = kActorSubmit[refs.size()](*actor, payload.dump(), refs);
    } else {
      FreeHeldResources(h, resources, want);
      result = kSubmit[refs.size()](payload.dump(), refs, resources,
                                    request.value("instance", std::string("stage")));
    }
    h->tasks++;
    // First only the result's header comes back (the RunStats or the error),
    // cut off beside the result by a small task (Ray schedules a task near
    // its large arguments); the output follows only if it is fetched.
    auto head = ray::Task(&FrameHead);
    head.SetName("stagekit_frame_head");
    head.SetResources({{"CPU", 0.01}});
    ray::ObjectRef<Bytes> awaited = head.Remote(result);
    h->helper_tasks++;
    // When the stage task fails (its worker or node died), Ray's C++ worker
    // still runs the header task on the error and reports a decoding failure
    // of its own; the stage's result itself then says what happened.
    bool awaiting_head = true;
    std::shared_ptr<Bytes> frame;
    bool lost = false;
    while (!frame && !lost) {
      try {
        // Get with a short timeout, so that Ctrl-C and the stage timeout are noticed.
        frame = ray::Get(awaited, 100);
      } catch (const ray::internal::RayTimeoutException&) {
        if (stagekit_interrupted() != 0) {
          if (actor) DiscardActor(h, *actor);
          return EmitError(kInterrupted, label + " was interrupted while running on Ray", out,
                           out_len);
        }
        if (timeout_ms > 0 &&
            std::chrono::steady_clock::now() - start > std::chrono::milliseconds(timeout_ms)) {
          if (actor) {
            // Unlike a task, an actor can be stopped: kill it (a new one replaces it).
            DiscardActor(h, *actor);
            return EmitError(kTimeout,
                             label + " timed out after " + std::to_string(timeout_ms) +
                                 "ms on Ray; its warm actor was killed and will be replaced",
                             out, out_len);
          }
          return EmitError(
              kTimeout,
              label + " timed out after " + std::to_string(timeout_ms) +
                  "ms on Ray (the C++ API cannot cancel the task; it runs until it ends "
                  "or its cluster stops)",
              out, out_len);
        }
      } catch (const ray::internal::RayException&) {
        if (awaiting_head) {
          awaiting_head = false;
          awaited = result;  // copy-assign: never move-construct a reference
          continue;
        }
        try {
          throw;
        } catch (const ray::internal::RayActorException& e) {
          last_failure = std::string("its warm actor died (") + e.what() + ")";
          lost = true;
        } catch (const ray::internal::RayWorkerException& e) {
          last_failure = std::string("its worker died (") + e.what() + ")";
          lost = true;
        } catch (const ray::internal::UnreconstructableException& e) {
          last_failure = std::string("its result was lost with its node (") + e.what() + ")";
          lost = true;
        } catch (const ray::internal::RayTaskException& e) {
          return EmitError(kInternal,
                           label + ": the Ray task failed outside the stage: " + e.what() +
                               " (is libstagekit_ray.so loadable on every node?)",
                           out, out_len);
        } catch (const ray::internal::RayException& e) {
          last_failure = std::string("Ray reported: ") + e.what();
          lost = true;
        }
      }
    }
    if (!frame) {
      if (actor) DiscardActor(h, *actor);
      h->retries++;
      continue;
    }
    if (frame->size() < 8 || std::memcmp(frame->data(), kMagic, 4) != 0) {
      if (actor) DiscardActor(h, *actor);
      // Not our frame: Ray's C++ Get decodes some system errors (a node that
      // died, for one) as if they were the task's value. Treat it as a
      // system failure, like a dead worker.
      std::string head;
      for (std::size_t i = 0; i < frame->size() && head.size() < 80; ++i) {
        char c = (*frame)[i];
        if (c >= 32 && c < 127) head.push_back(c);
      }
      last_failure = "Ray returned an error the C++ API cannot decode (\"" + head + "\")";
      h->retries++;
      continue;
    }
    std::uint32_t n = 0;
    for (int i = 0; i < 4; ++i)
      n |= static_cast<std::uint32_t>(static_cast<unsigned char>((*frame)[4 + i])) << (8 * i);
    json status = json::parse(frame->begin() + 8, frame->begin() + 8 + n);
    if (actor) ReleaseActor(h, warm_key, *actor);
    if (status.contains("error")) {
      // The stage's own failure: never retried. Its code is in the JSON.
      return Emit(status.dump(), kStageFailed, out, out_len);
    }
    if (actor && status.contains("metrics") && status["metrics"].contains("warm")) {
      status["metrics"]["warm"]["actor"] = Hex(actor->ID());
      status["metrics"]["warm"]["new_actor"] = fresh_actor;
    }
    const std::uint64_t bytes_out = status.value("bytes_out", std::uint64_t{0});
    const std::string digest = status.value("output_digest", "");
    if (fetch && bytes_out > window) {
      std::string error;
      bool lost_output = false;
      if (int rc = FetchInWindows(h, result, output, bytes_out, window, digest, error, lost_output);
          rc != 0) {
        if (!lost_output) return EmitError(rc, label + ": " + error, out, out_len);
        last_failure = "its output was lost before the driver had it (" + error + ")";
        h->retries++;
        continue;
      }
      h->outputs_fetched++;
    } else if (fetch) {
      std::shared_ptr<Bytes> whole;
      bool interrupted = false;
      std::string failure;
      if (!GetPatiently(result, whole, failure, interrupted)) {
        if (interrupted) {
          return EmitError(kInterrupted, label + " was interrupted while its output was fetched",
                           out, out_len);
        }
        last_failure = "its output was lost before the driver had it (" + failure + ")";
        h->retries++;
        continue;
      }
      const std::size_t header = FrameHeaderSize(*whole);
      const char* data = whole->data() + header;
      std::size_t size = header == 0 ? 0 : whole->size() - header;
      char hex[65];
      stagekit_sha256_hex(data, size, hex);
      if (header == 0 || digest != std::string("sha256:") + hex) {
        last_failure = "the output bytes arrived corrupted (digest mismatch)";
        h->retries++;
        continue;
      }
      std::string error;
      if (int rc = WriteOutputAtomically(output, data, size, error); rc != 0) {
        return EmitError(rc, label + ": " + error, out, out_len);
      }
      h->outputs_fetched++;
      h->bytes_fetched += size;
    } else {
      h->outputs_remote++;
      h->bytes_remote += bytes_out;
    }
    {
      std::lock_guard<std::mutex> lock(h->mu);
      // Every reader of an input it got by reference has now read it: a
      // result with no reader left is released (Ray frees it).
      for (const auto& entry : names) {
        if (entry.size() < 3 || !entry[2].get<bool>()) continue;
        const std::string path = inputs.at(entry[0].get<std::string>()).get<std::string>();
        auto it = h->produced.find(path);
        if (it != h->produced.end() && --it->second.readers_left <= 0) {
          h->produced.erase(it);
          h->results_released++;
        }
      }
      const int readers = task.value("readers", 0);
      if (readers > 0) {
        Produced made;
        made.frame = result;  // copy: the bridge never move-constructs a reference
        made.node = status.value("node", "");
        made.bytes = bytes_out;
        made.readers_left = readers;
        h->produced[output] = made;
      }
    }
    status["attempt"] = attempt;
    return Emit(status.dump(), 0, out, out_len);
  }
  std::string hint;
  if (last_failure.rfind("its worker died", 0) == 0) {
    // A worker that cannot load the bridge or a stage library dies at start,
    // and only its node's logs say why.
    hint =
        "; the node's logs say why (<ray temp dir>/session_latest/logs/worker-*.err and "
        "raylet.out): a worker dies at start when it cannot load libstagekit_ray.so or a stage "
        "library from the driver's path, so every node needs them at that path (for a package "
        "shipped with `stagekit submit`: the same Ray temp dir on every node, e.g. the default "
        "/tmp/ray)";
  }
  return EmitError(kStageFailed,
                   label + " failed on Ray after " + std::to_string(max_attempts) +
                       " attempts: " + last_failure + hint,
                   out, out_len);
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
    return EmitError(kInternal, std::string("cannot connect to Ray: ") + e.what(), out, out_len);
  }
}

int stagekit_ray_bridge_run(stagekit_ray_bridge* handle, const char* request, size_t request_len,
                            const char* task, size_t task_len, char** out, size_t* out_len) {
  try {
    return RunStage(handle, json::parse(std::string(request, request_len)),
                    json::parse(std::string(task, task_len)), out, out_len);
  } catch (const std::exception& e) {
    return EmitError(kInternal, std::string("ray executor: ") + e.what(), out, out_len);
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
            {"outputs_left_on_cluster", h->outputs_remote.load()},
            {"bytes_left_on_cluster", h->bytes_remote.load()},
            {"inputs_by_reference", h->inputs_by_reference.load()},
            {"bytes_by_reference", h->bytes_by_reference.load()}};
  return Emit(s.dump(), 0, out, out_len);
}

void stagekit_ray_bridge_close(stagekit_ray_bridge* handle) {
  if (handle == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(handle->mu);
    handle->inputs.clear();  // release the object references before the driver goes
    handle->produced.clear();
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
