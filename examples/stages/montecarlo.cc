// Seeded Monte Carlo estimate of pi with a deterministic reduction.
//   montecarlo.sample  kwargs: samples (default 1000000). Draws points in the
//                      unit square from std::mt19937_64 seeded with ctx.seed()
//                      (the engine's output is fixed by the standard) and
//                      counts hits inside the quarter circle with exact integer
//                      arithmetic, so no compiler flag or FPU mode can change it.
//                      Writes "hits samples\n".
//   montecarlo.reduce  sums the integer counts of all inputs and writes the
//                      estimate; integer sums do not depend on order.
#include <cinttypes>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>

#include "stagekit/stage.h"

namespace {

void Sample(stagekit::StageContext& ctx) {
  const std::uint64_t samples = ctx.kwargs().value("samples", std::uint64_t{1000000});
  std::mt19937_64 rng(ctx.seed());
  std::uint64_t hits = 0;
  for (std::uint64_t i = 0; i < samples; ++i) {
    const std::uint64_t r = rng();
    const std::uint64_t x = r >> 32, y = r & 0xffffffffu;  // two 32-bit coordinates
    // x*x + y*y < 2^64, exactly: each square fits in 64 bits and 2^64 - y*y
    // is the unsigned negation of y*y (for y > 0).
    hits += (y == 0) || (x * x < 0 - y * y);
  }
  ctx.WriteOutput(std::to_string(hits) + " " + std::to_string(samples) + "\n");
  ctx.SetMetric("samples", samples);
}

void Reduce(stagekit::StageContext& ctx) {
  std::uint64_t hits = 0, samples = 0;
  for (const auto& [name, path] : ctx.inputs()) {
    std::uint64_t h = 0, s = 0;
    if (std::sscanf(ctx.ReadInput(name).c_str(), "%" SCNu64 " %" SCNu64, &h, &s) != 2) {
      throw std::runtime_error("input '" + name + "' is not 'hits samples'");
    }
    hits += h;
    samples += s;
  }
  if (samples == 0) throw std::invalid_argument("montecarlo.reduce: no samples in the inputs");
  char estimate[64];
  std::snprintf(estimate, sizeof(estimate), "%.9f",
                4.0 * static_cast<double>(hits) / static_cast<double>(samples));
  ctx.WriteOutput(
      stagekit::CanonicalJson({{"hits", hits}, {"samples", samples}, {"pi_estimate", estimate}}) +
      "\n");
}

}  // namespace

STAGEKIT_STAGE("montecarlo.sample", Sample);
STAGEKIT_STAGE("montecarlo.reduce", Reduce);
