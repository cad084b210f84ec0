// `cohort generate CONFIG [checkpoint=PATH] [prompt=TEXT | prompt_tokens=1,2,3]
// [max_new_tokens=N] [temperature=T] [top_k=K] [seed=S] [key.path=value ...]`: samples a
// continuation from a language model's checkpoint (model.type gpt, or a sequential or graph
// model over tokens). Byte-level models (model.vocab 256, data.dataset text) read and write text;
// others take and print token ids, since Cohort carries no tokenizer.
#pragma once

#include <string>
#include <vector>

namespace cohort::launcher {

// Returns 0; throws ConfigError for bad options, IoError for an unreadable checkpoint.
int generate_command(const std::string& config, const std::vector<std::string>& args);

}  // namespace cohort::launcher
