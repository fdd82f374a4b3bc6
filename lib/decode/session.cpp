#include "decode/session.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <filesystem>

#include "core/error.h"
#include "io/jsonl.h"

namespace lf {

std::unique_ptr<Session> open_session(const DecodingConfig& config) {
  auto session = std::make_unique<Session>();
  session->set = load_model_set(config);
  session->strategy = config.model ? "model" : config.fusion.strategy;
  session->chat_template = resolve_chat_template(config.generation.chat_template, session->set.model_dir, {},
                                                 config.generation.chat_template_kwargs);
  const Tokenizer& tokenizer = *session->set.tokenizer;
  GenerateOptions& o = session->options;
  o.max_new_tokens = config.generation.max_new_tokens;
  o.stop = config.generation.stop;
  o.batch_size = config.generation.batch_size;
  o.kv_cache = config.generation.kv_cache;
  o.sampling = config.sampling;
  o.eos_ids = stop_token_ids(tokenizer, session->chat_template);
  const SpecialTokens& special = tokenizer.special_tokens();
  o.pad_id = special.pad ? *special.pad : special.eos ? *special.eos : 0;
  o.tokenizer = &tokenizer;
  if (config.generation.shots > 0) session->shots = read_shots(config.generation.shots_file, config.generation.shots);
  return session;
}

std::vector<int64_t> stop_token_ids(const Tokenizer& tokenizer, const ChatTemplate& chat_template) {
  std::vector<int64_t> ids;
  if (tokenizer.special_tokens().eos) ids.push_back(*tokenizer.special_tokens().eos);
  if (!chat_template.assistant_suffix.empty()) {
    const Encoding suffix = tokenizer.encode(chat_template.assistant_suffix);
    if (!suffix.ids.empty() && tokenizer.is_special(suffix.ids[0]) &&
        std::find(ids.begin(), ids.end(), suffix.ids[0]) == ids.end())
      ids.push_back(suffix.ids[0]);
  }
  return ids;
}

std::vector<int64_t> encode_prompt(const Session& session, const std::string& prompt, const std::string& system,
                                   const std::vector<Message>* shots) {
  std::vector<Message> messages;
  if (!system.empty()) messages.push_back({"system", system});
  const auto& examples = shots ? *shots : session.shots;
  messages.insert(messages.end(), examples.begin(), examples.end());
  messages.push_back({"user", prompt});
  return encode_messages(session, messages);
}

std::vector<int64_t> encode_messages(const Session& session, const std::vector<Message>& messages) {
  const Tokenizer& tokenizer = *session.set.tokenizer;
  const RenderedChat chat = render_generation_prompt(session.chat_template, messages, tokenizer.special_tokens().eos_text);
  std::vector<int64_t> ids;
  if (const auto bos = leading_bos(chat, session.chat_template, tokenizer)) ids.push_back(*bos);
  const Encoding encoded = tokenizer.encode(chat.prompt);
  ids.insert(ids.end(), encoded.ids.begin(), encoded.ids.end());
  return ids;
}

std::vector<Message> read_shots(const std::string& path, int64_t n) {
  std::vector<Message> out;
  if (n <= 0) return out;
  int64_t read = 0;
  for_each_jsonl_line(path, [&](const nlohmann::json& j, int64_t) {
    if (read == n) return;
    if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string() || !j.contains("response") ||
        !j["response"].is_string())
      throw InputError("expected an object with string \"prompt\" and \"response\" fields (a worked example)");
    out.push_back({"user", j["prompt"].get<std::string>()});
    out.push_back({"assistant", j["response"].get<std::string>()});
    ++read;
  });
  if (read < n)
    throw InputError(path + ": " + std::to_string(read) + " worked example(s), " + std::to_string(n) + " shots asked for");
  return out;
}

std::vector<PromptRecord> read_prompts(const std::string& path) {
  std::vector<PromptRecord> out;
  for_each_jsonl_line(path, [&](const nlohmann::json& j, int64_t line) {
    if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string())
      throw InputError("expected an object with a string \"prompt\" field");
    PromptRecord r;
    r.prompt = j["prompt"].get<std::string>();
    if (j.contains("system")) {
      if (!j["system"].is_string()) throw InputError("\"system\" must be a string");
      r.system = j["system"].get<std::string>();
    }
    r.line = line;
    out.push_back(std::move(r));
  });
  if (out.empty()) throw InputError(path + ": no prompts");
  return out;
}

void write_completions(const std::string& path, const std::vector<PromptRecord>& prompts,
                       const std::vector<std::vector<int64_t>>& prompt_ids, const std::vector<Completion>& completions) {
  const std::filesystem::path target(path);
  if (target.has_parent_path()) std::filesystem::create_directories(target.parent_path());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw RuntimeFailure(path + ": cannot write");
    for (size_t i = 0; i < prompts.size(); ++i) {
      nlohmann::json j = {{"prompt", prompts[i].prompt},
                          {"completion", completions[i].text},
                          {"prompt_ids", prompt_ids[i]},
                          {"completion_ids", completions[i].ids},
                          {"finish_reason", completions[i].finish_reason}};
      out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    }
    if (!out.flush()) throw RuntimeFailure(path + ": write failed");
  }
  std::filesystem::rename(tmp, path);  // readers never see a half-written file
}

TraceWriter::TraceWriter(const std::string& path, const ModelSet& set) : out_(path, std::ios::binary), path_(path) {
  if (!out_) throw RuntimeFailure(path + ": cannot write the trace");
  for (const auto& e : set.experts) expert_names_.push_back(e.name);
}

void TraceWriter::operator()(const TraceStep& step) {
  const FusedRows& f = *step.fused;
  at::Tensor expert = f.expert.defined() ? f.expert.to(at::kCPU).to(at::kLong) : at::Tensor();
  at::Tensor alpha = f.alpha.defined() ? f.alpha.to(at::kCPU).to(at::kDouble) : at::Tensor();
  at::Tensor objective = f.objective.defined() ? f.objective.to(at::kCPU).to(at::kDouble) : at::Tensor();
  const int64_t* tokens = step.tokens.data_ptr<int64_t>();
  for (size_t r = 0; r < step.keys.size(); ++r) {
    if (!step.active[r]) continue;
    nlohmann::json j = {{"prompt_index", step.keys[r]}, {"step", step.step}, {"token", tokens[r]}};
    if (expert.defined()) {
      const int64_t e = expert.data_ptr<int64_t>()[r];
      j["expert"] = e < 0 ? std::string("all") : expert_names_.at(e);
    }
    if (alpha.defined()) j["alpha"] = alpha.data_ptr<double>()[r];
    if (objective.defined()) j["J"] = objective.data_ptr<double>()[r];
    out_ << j.dump() << "\n";
  }
  out_.flush();
}

}  // namespace lf
