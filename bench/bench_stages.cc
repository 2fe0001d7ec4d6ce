// The stage the subprocess benchmarks run: the same body as test.noop.
#include "stagekit/stage.h"

namespace {

// Writes an empty output: nothing but stagekit's own work is left to measure.
void Noop(stagekit::StageContext& ctx) { ctx.WriteOutput(""); }

}  // namespace

STAGEKIT_STAGE("bench.noop", Noop);
