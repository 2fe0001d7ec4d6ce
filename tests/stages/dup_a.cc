#include "stagekit/stage.h"
namespace {
void A(stagekit::StageContext& ctx) { ctx.WriteOutput("a"); }
}  // namespace
STAGEKIT_STAGE("dup.same_name", A);
