// `logitfuse logits`: full-vocabulary logits for token-id sequences, to safetensors.
#include <CLI/CLI.hpp>
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>


#include "commands.h"
#include "core/error.h"
#include "io/jsonl.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"

namespace lf::app {

namespace {

std::vector<std::vector<int64_t>> read_id_sequences(const std::string& path, int64_t vocab_size) {
  std::vector<std::vector<int64_t>> sequences;
  for_each_jsonl_line(path, [&](const nlohmann::json& line, int64_t) {
    const nlohmann::json& j = line.is_object() && line.contains("ids") ? line["ids"] : line;
    if (!j.is_array() || j.empty()) throw InputError("expected a non-empty JSON array of token ids");
    std::vector<int64_t> ids;
    for (const auto& v : j) {
      if (!v.is_number_integer()) throw InputError("token ids must be integers");
      const int64_t id = v.get<int64_t>();
      if (id < 0 || id >= vocab_size)
        throw InputError("token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
      ids.push_back(id);
    }
    sequences.push_back(std::move(ids));
  });
  if (sequences.empty()) throw InputError(path + ": no sequences");
  return sequences;
}

}  // namespace

void add_logits(CLI::App& root) {
  struct Options {
    std::string model, adapter, input, out, dtype = "fp32", device = "cpu";
    int64_t decode_chunk = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = root.add_subcommand("logits", "Full-vocabulary logits for token-id sequences (one JSON array per line)");
  cmd->add_option("--model", opt->model, "model directory (Hugging Face layout)")->required();
  cmd->add_option("--adapter", opt->adapter, "a PEFT LoRA adapter directory applied over the model (not merged)");
  cmd->add_option("--input", opt->input, "JSONL: one array of token ids per line")->required();
  cmd->add_option("--out", opt->out, "output .safetensors: logits.<i> of shape [len_i, V], float32")->required();
  cmd->add_option("--dtype", opt->dtype, "compute dtype: fp32|bf16|fp16")->capture_default_str();
  cmd->add_option("--device", opt->device, "cpu|cuda|cuda:N")->capture_default_str();
  cmd->add_option("--decode-chunk", opt->decode_chunk,
                  "feed each sequence through the KV cache this many tokens at a time (0 = all at once)")
      ->capture_default_str();
  cmd->callback([opt] {
    if (opt->decode_chunk < 0) throw InputError("--decode-chunk must be >= 0");
    LoadOptions load{opt->dtype, opt->device, opt->adapter};
    auto model = load_model(opt->model, load);
    model->eval();
    const auto sequences = read_id_sequences(opt->input, model->config().vocab_size);
    const int64_t vocab = model->config().vocab_size;

    std::vector<SafetensorsStreamWriter::Spec> specs;
    for (size_t i = 0; i < sequences.size(); ++i)
      specs.push_back({"logits." + std::to_string(i), at::kFloat, {static_cast<int64_t>(sequences[i].size()), vocab}});
    SafetensorsStreamWriter writer(opt->out, specs, {{"model", opt->model}});

    c10::InferenceMode inference;
    const auto device = parse_device(opt->device);
    for (const auto& ids : sequences) {
      at::Tensor input = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).to(device).unsqueeze(0);
      at::Tensor logits;
      if (opt->decode_chunk == 0) {
        logits = model->forward(input);
      } else {
        KVCache cache;
        std::vector<at::Tensor> pieces;
        for (int64_t start = 0; start < input.size(1); start += opt->decode_chunk) {
          const int64_t n = std::min<int64_t>(opt->decode_chunk, input.size(1) - start);
          ForwardOptions forward;
          forward.cache = &cache;
          pieces.push_back(model->forward(input.narrow(1, start, n), forward));
        }
        logits = at::cat(pieces, 1);
      }
      writer.write(logits.squeeze(0).to(at::kFloat));
    }
    writer.finish();
    spdlog::info("wrote logits of {} sequence(s) to {}", sequences.size(), opt->out);
  });
}

}  // namespace lf::app
