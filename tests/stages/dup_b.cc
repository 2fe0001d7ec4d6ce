#include "stagekit/stage.h"
namespace {
void B(stagekit::StageContext& ctx) { ctx.WriteOutput("b"); }
}  // namespace
STAGEKIT_STAGE("dup.same_name", B);
