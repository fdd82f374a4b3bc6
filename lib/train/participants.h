// The models taking part in a fusion run: the student and each teacher, each with its own
// tokenizer, chat template, device and effective vocabulary (the tokenizer's ids; padding rows of
// the embedding beyond them are ignored).
#pragma once

#include <memory>
#include <string>

#include "config/recipe.h"
#include "model/transformer.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace lf {

struct Participant {
  std::string name;
  std::string dir;            // model directory
  std::string adapter;        // a PEFT LoRA adapter applied over it (not merged); empty: none
  std::string tokenizer_dir;  // where its tokenizer files live (copied into saved models)
  std::shared_ptr<CausalLM> model;
  std::shared_ptr<Tokenizer> tokenizer;
  ChatTemplate chat_template;
  int64_t vocab = 0;  // min(model vocabulary, tokenizer vocabulary)
  c10::Device device = c10::Device(c10::kCPU);

  // Logits over the effective vocabulary for hidden-state rows [n, d].
  at::Tensor logits(const at::Tensor& hidden_rows) const;
  int64_t pad_id() const;
};

// Loads a model (weights in `dtype` on `device`, with `adapter` applied when set), its tokenizer and
// chat template. Without
// `load_weights` (a teacher read from a logits cache) only the config, tokenizer and template are read.
Participant load_participant(const std::string& name, const std::string& dir, const std::optional<std::string>& tokenizer,
                             const std::string& chat_template, const std::string& dtype, const std::string& device,
                             const std::map<std::string, ChatTemplate>& custom_templates, bool load_weights = true,
                             const nlohmann::json& chat_template_kwargs = nlohmann::json::object(),
                             const std::string& adapter = "");

}  // namespace lf
