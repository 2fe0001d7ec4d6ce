// runtime_env.env_vars is not a secret store: Ray keeps it in the job table
// and shows it in the dashboard. This finds names and values that look like
// credentials before they are sent.
#ifndef STAGEKIT_DEPLOY_SECRETS_H_
#define STAGEKIT_DEPLOY_SECRETS_H_

#include <map>
#include <optional>
#include <set>
#include <string>

#include "stagekit/status.h"

namespace stagekit::deploy {

// Why `name`=`value` looks like a credential ("its name has SECRET", "its
// value looks like an AWS access key id"), or nullopt. Never quotes the value.
std::optional<std::string> LooksLikeCredential(const std::string& name, const std::string& value);

// util::kSecretRefused for the first variable that looks like a credential and is
// not in `allowed`, saying what to do instead.
Status CheckEnvVars(const std::map<std::string, std::string>& env,
                    const std::set<std::string>& allowed);

}  // namespace stagekit::deploy

#endif  // STAGEKIT_DEPLOY_SECRETS_H_
