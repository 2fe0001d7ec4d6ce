// The seed's `trivial` stage: reads one input and writes a small, fully
// deterministic JSON description of it.
#include <algorithm>
#include <string>

#include "stagekit/stage.h"

namespace {

void Trivial(stagekit::StageContext& ctx) {
  const std::string text = ctx.ReadInput("in");
  stagekit::Json out = {
      {"stage", ctx.instance()},
      {"job", ctx.job().name},
      {"seed", ctx.seed()},
      {"bytes", text.size()},
      {"lines", std::count(text.begin(), text.end(), '\n')},
      {"head", text.substr(0, 64)},
      {"kwargs", ctx.kwargs()},
  };
  ctx.WriteOutput(stagekit::CanonicalJson(out) + "\n");
}

}  // namespace

STAGEKIT_STAGE("trivial", Trivial);
