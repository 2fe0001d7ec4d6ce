// Stages that misbehave on purpose, for tests of errors and executors.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>

#include "stagekit/stage.h"

namespace {

// Copies input `in` to the output.
void Copy(stagekit::StageContext& ctx) { ctx.WriteOutput(ctx.ReadInput("in")); }

// Writes an empty output: a no-op stage for overhead measurements.
void Noop(stagekit::StageContext& ctx) { ctx.WriteOutput(""); }

void Throws(stagekit::StageContext& ctx) {
  ctx.WriteOutput("partial");  // must not survive the failure
  throw std::runtime_error(ctx.kwargs().value("message", std::string("boom")));
}

void NoOutput(stagekit::StageContext&) {}

// Dies from a signal after writing part of its output.
void Crash(stagekit::StageContext& ctx) {
  ctx.WriteOutput("partial");
  std::fprintf(stderr, "about to die\n");
  std::fflush(stderr);
  ::raise(ctx.kwargs().value("signal", SIGABRT));  // what a failed assert() does
}

// Sleeps `seconds`; with ignore_term it ignores SIGTERM (for the SIGKILL escalation).
void Sleep(stagekit::StageContext& ctx) {
  if (ctx.kwargs().value("ignore_term", false)) ::signal(SIGTERM, SIG_IGN);
  ctx.WriteOutput("partial");
  std::this_thread::sleep_for(std::chrono::duration<double>(ctx.kwargs().value("seconds", 60.0)));
}

// Output differs from process to process: the parity gate must catch it.
void PerProcess(stagekit::StageContext& ctx) {
  ctx.WriteOutput("same prefix, then pid " + std::to_string(::getpid()) + "\n");
}

// Prints to stdout like careless code does; the protocol must survive it.
void Chatty(stagekit::StageContext& ctx) {
  std::cout << "{\"not\": \"run stats\"}" << std::flush;  // no newline on purpose
  std::printf("more noise\n");
  ctx.WriteOutput("chatty ok\n");
}

// Echoes what a stage can see, for request round-trip tests.
void Describe(stagekit::StageContext& ctx) {
  stagekit::Json inputs = stagekit::Json::object();
  for (const auto& [name, path] : ctx.inputs()) inputs[name] = path.filename().string();
  ctx.SetMetric("answer", 42);
  ctx.WriteOutput(stagekit::CanonicalJson({{"stage", ctx.stage()},
                                           {"instance", ctx.instance()},
                                           {"seed", ctx.seed()},
                                           {"job", ctx.job().ToJson()},
                                           {"kwargs", ctx.kwargs()},
                                           {"inputs", inputs}}));
}

// Records its pid in kwargs.pid_dir (so a test can kill its process), sleeps,
// then writes an output that depends only on its kwargs (kwargs.text when
// given); with ignore_term it sleeps through SIGTERM.
void PidSleep(stagekit::StageContext& ctx) {
  std::string dir = ctx.kwargs().value("pid_dir", std::string("/tmp"));
  std::string pid = std::to_string(::getpid());
  {
    std::FILE* f = std::fopen((dir + "/" + ctx.instance() + "." + pid + ".pid").c_str(), "w");
    if (f != nullptr) {
      std::fputs(pid.c_str(), f);
      std::fclose(f);
    }
  }
  if (ctx.kwargs().value("ignore_term", false)) ::signal(SIGTERM, SIG_IGN);
  std::this_thread::sleep_for(std::chrono::duration<double>(ctx.kwargs().value("seconds", 1.0)));
  std::string text = ctx.kwargs().value("text", "slept for " + ctx.instance() + "\n");
  // {pad: N}: the text repeated to N bytes, for an output too big for Ray to inline.
  const std::size_t pad = ctx.kwargs().value("pad", std::size_t{0});
  std::string out = text;
  while (!text.empty() && out.size() < pad) out += text;
  ctx.WriteOutput(out);
}

// kwargs.bytes pseudo-random bytes from kwargs.seed, written in 1 MiB pieces
// (a stage whose output is far larger than what it holds).
void Fill(stagekit::StageContext& ctx) {
  const std::uint64_t total = ctx.kwargs().value("bytes", std::uint64_t{1} << 20);
  std::uint64_t x = ctx.kwargs().value("seed", std::uint64_t{1}) * 0x9E3779B97F4A7C15ull + 1;
  std::FILE* f = std::fopen(ctx.output().c_str(), "wb");
  if (f == nullptr) throw std::runtime_error("cannot write the output");
  std::string piece(1 << 20, '\0');
  for (std::uint64_t done = 0; done < total;) {
    const std::size_t n =
        static_cast<std::size_t>(std::min<std::uint64_t>(piece.size(), total - done));
    for (std::size_t i = 0; i < n; i += 8) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      std::memcpy(&piece[i], &x, std::min<std::size_t>(8, n - i));
    }
    if (std::fwrite(piece.data(), 1, n, f) != n) {
      std::fclose(f);
      throw std::runtime_error("cannot write the output");
    }
    done += n;
  }
  if (std::fclose(f) != 0) throw std::runtime_error("cannot write the output");
}

// Every input, in name order: its name, its size and its bytes (a fan-in).
void Concat(stagekit::StageContext& ctx) {
  std::string out;
  for (const auto& [name, path] : ctx.inputs()) {
    std::string bytes = ctx.ReadInput(name);
    out += name + " " + std::to_string(bytes.size()) + "\n" + bytes;
  }
  ctx.WriteOutput(out);
}

// Size and a position-weighted checksum of input `in`.
void Checksum(stagekit::StageContext& ctx) {
  std::string bytes = ctx.ReadInput("in");
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i)
    sum = sum * 31 + static_cast<unsigned char>(bytes[i]);
  ctx.WriteOutput(std::to_string(bytes.size()) + " " + std::to_string(sum) + "\n");
}

// One line per input: its name, size and position-weighted checksum. A
// reduce that reads everything and writes little, for data-plane benchmarks.
void Sizes(stagekit::StageContext& ctx) {
  std::string out;
  for (const auto& [name, path] : ctx.inputs()) {
    std::string bytes = ctx.ReadInput(name);
    std::uint64_t sum = 0;
    for (char c : bytes) sum = sum * 31 + static_cast<unsigned char>(c);
    out += name + " " + std::to_string(bytes.size()) + " " + std::to_string(sum) + "\n";
  }
  ctx.WriteOutput(out);
}

}  // namespace

STAGEKIT_STAGE("test.pid_sleep", PidSleep);
STAGEKIT_STAGE("test.checksum", Checksum);
STAGEKIT_STAGE("test.sizes", Sizes);
STAGEKIT_STAGE("test.copy", Copy);
STAGEKIT_STAGE("test.concat", Concat);
STAGEKIT_STAGE("test.fill", Fill);
STAGEKIT_STAGE("test.noop", Noop);
STAGEKIT_STAGE("test.throws", Throws);
STAGEKIT_STAGE("test.no_output", NoOutput);
STAGEKIT_STAGE("test.crash", Crash);
STAGEKIT_STAGE("test.sleep", Sleep);
STAGEKIT_STAGE("test.per_process", PerProcess);
STAGEKIT_STAGE("test.chatty", Chatty);
STAGEKIT_STAGE("test.describe", Describe);
