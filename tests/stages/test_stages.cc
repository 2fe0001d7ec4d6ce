// Stages that misbehave on purpose, for tests of errors and executors.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
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
  ctx.WriteOutput(ctx.kwargs().value("text", "slept for " + ctx.instance() + "\n"));
}

// Size and a position-weighted checksum of input `in`.
void Checksum(stagekit::StageContext& ctx) {
  std::string bytes = ctx.ReadInput("in");
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i)
    sum = sum * 31 + static_cast<unsigned char>(bytes[i]);
  ctx.WriteOutput(std::to_string(bytes.size()) + " " + std::to_string(sum) + "\n");
}

}  // namespace

STAGEKIT_STAGE("test.pid_sleep", PidSleep);
STAGEKIT_STAGE("test.checksum", Checksum);
STAGEKIT_STAGE("test.copy", Copy);
STAGEKIT_STAGE("test.noop", Noop);
STAGEKIT_STAGE("test.throws", Throws);
STAGEKIT_STAGE("test.no_output", NoOutput);
STAGEKIT_STAGE("test.crash", Crash);
STAGEKIT_STAGE("test.sleep", Sleep);
STAGEKIT_STAGE("test.per_process", PerProcess);
STAGEKIT_STAGE("test.chatty", Chatty);
STAGEKIT_STAGE("test.describe", Describe);
