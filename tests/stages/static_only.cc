// A registration-only translation unit: nothing refers to it, so a linker
// drops it from a static library unless the library is linked whole-archive.
#include "stagekit/stage.h"
namespace {
void StaticOnly(stagekit::StageContext& ctx) { ctx.WriteOutput("kept\n"); }
}  // namespace
STAGEKIT_STAGE("test.static_only", StaticOnly);
