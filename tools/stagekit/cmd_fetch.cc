// stagekit fetch s3://BUCKET/PREFIX DIR: bring a run's artifacts back.
#include <iostream>

#include "cli.h"
#include "deploy/s3.h"

namespace stagekit::cli {
namespace {

struct FetchCommand {
  std::string uri;
  std::string dir;
  std::string endpoint_url;
  bool overwrite = false;
};

Status Fetch(const FetchCommand& cmd) {
  std::size_t files = 0;
  if (Status s =
          deploy::S3Fetch(cmd.uri, cmd.dir, deploy::S3OptionsFromEnvironment(cmd.endpoint_url),
                          cmd.overwrite, &files);
      !s.ok()) {
    return s;
  }
  std::cerr << "stagekit: fetched " << files << " file" << (files == 1 ? "" : "s") << " from "
            << cmd.uri << " into " << cmd.dir << "\n";
  return OkStatus();
}

}  // namespace

void SetFetchCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<FetchCommand>();
  CLI::App* sub = app.add_subcommand(
      "fetch", "Bring artifacts back from S3 (aws s3 sync) into a new directory, all or nothing");
  sub->add_option("URI", cmd->uri, "Where a run synced its outputs")
      ->required()
      ->type_name("s3://BUCKET/PREFIX");
  sub->add_option("DIR", cmd->dir, "A new (or empty) directory")->required();
  sub->add_flag("--overwrite", cmd->overwrite,
                "Replace DIR if it has files (only once the download is complete)");
  sub->add_option("--endpoint-url", cmd->endpoint_url,
                  "S3-compatible endpoint (default: $AWS_ENDPOINT_URL)");
  sub->callback([cmd, &action] { action = [cmd] { return Fetch(*cmd); }; });
}

}  // namespace stagekit::cli
