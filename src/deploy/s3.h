// Artifacts in object storage, through the real `aws` CLI (`aws s3 sync
// --no-progress`), so credentials come from wherever the AWS tools find them:
// an instance role on a cluster, the environment or ~/.aws on a laptop.
#ifndef STAGEKIT_DEPLOY_S3_H_
#define STAGEKIT_DEPLOY_S3_H_

#include <filesystem>
#include <set>
#include <string>

#include "stagekit/status.h"

namespace stagekit::deploy {

struct S3Options {
  // An S3-compatible endpoint (MinIO, moto, ...): --endpoint-url, else
  // $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL; empty for AWS itself.
  std::string endpoint_url;
  std::string aws = "aws";  // the CLI; $STAGEKIT_AWS overrides
};
S3Options S3OptionsFromEnvironment(const std::string& endpoint_flag);

// kUsage unless `uri` is s3://BUCKET[/PREFIX].
Status CheckS3Uri(const std::string& uri);

// Uploads every file below `dir` to `uri`. kOutputError with the CLI's
// message on failure.
Status S3Upload(const std::filesystem::path& dir, const std::string& uri, const S3Options& options);

// As S3Upload, less the files whose paths relative to `dir` are in `skip`
// (uploaded already, from the nodes that made them): those left are synced
// through a temporary tree of links to them.
Status S3UploadExcept(const std::filesystem::path& dir, const std::string& uri,
                      const S3Options& options, const std::set<std::string>& skip);

// Downloads everything below `uri` into the new directory `dir`: written
// beside it and renamed into place, so `dir` is complete or absent.
// kInputError when nothing is there; with `overwrite`, an existing `dir` is
// replaced only once the download is complete.
Status S3Fetch(const std::string& uri, const std::filesystem::path& dir, const S3Options& options,
               bool overwrite, std::size_t* files = nullptr);

}  // namespace stagekit::deploy

#endif  // STAGEKIT_DEPLOY_S3_H_
