// Gives a stage library a translation unit of its own, so that it can link a
// static library of stages with or without --whole-archive.
extern "C" int stagekit_test_anchor() { return 0; }
