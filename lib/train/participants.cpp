#include "train/participants.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <filesystem>

#include "core/error.h"
#include "model/checkpoint.h"

namespace lf {

at::Tensor Participant::logits(const at::Tensor& hidden_rows) const {
  at::Tensor out = model->logits(hidden_rows);
  return out.size(-1) == vocab ? out : out.narrow(-1, 0, vocab);
}

int64_t Participant::pad_id() const {
  const auto& s = tokenizer->special_tokens();
  if (s.pad) return *s.pad;
  if (s.eos) return *s.eos;
  return 0;  // right padding is never attended to nor learned from, so any id will do
}

Participant load_participant(const std::string& name, const std::string& dir, const std::optional<std::string>& tokenizer,
                             const std::string& chat_template, const std::string& dtype, const std::string& device,
                             const std::map<std::string, ChatTemplate>& custom_templates, bool load_weights,
                             const nlohmann::json& chat_template_kwargs, const std::string& adapter) {
  Participant p;
  p.name = name;
  p.dir = dir;
  p.adapter = adapter;
  p.tokenizer_dir = tokenizer ? (std::filesystem::is_directory(*tokenizer)
                                     ? *tokenizer
                                     : std::filesystem::path(*tokenizer).parent_path().string())
                              : dir;
  p.device = parse_device(device);
  if (load_weights) p.model = load_model(dir, {dtype, device, adapter});
  p.tokenizer = load_tokenizer(tokenizer ? *tokenizer : dir);
  p.chat_template = resolve_chat_template(chat_template, p.tokenizer_dir, custom_templates, chat_template_kwargs);
  const int64_t model_vocab = load_weights ? p.model->config().vocab_size : load_model_config(dir).vocab_size;
  const int64_t tokenizer_vocab = p.tokenizer->vocab_size();
  if (tokenizer_vocab > model_vocab)
    throw InputError(name + ": tokenizer has " + std::to_string(tokenizer_vocab) + " ids but the model's embedding only " +
                         std::to_string(model_vocab),
                     "the tokenizer does not belong to this model");
  p.vocab = tokenizer_vocab;
  if (tokenizer_vocab < model_vocab)
    spdlog::info("{}: {} embedding rows beyond the tokenizer's {} ids are padding and ignored", name,
                 model_vocab - tokenizer_vocab, tokenizer_vocab);
  return p;
}

}  // namespace lf
