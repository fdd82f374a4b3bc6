#include "model/lora.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "core/error.h"
#include "core/strings.h"
#include "io/file.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"

namespace fs = std::filesystem;

namespace lf {

namespace {

const std::string kPrefix = "base_model.model.";
const std::string kA = ".lora_A.weight", kB = ".lora_B.weight";

std::string last_part(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

std::string shape_text(at::IntArrayRef shape) { return c10::str(shape); }

std::map<std::string, LinearImpl*> linear_map(CausalLM& model) {
  std::map<std::string, LinearImpl*> out;
  for (auto& [name, linear] : linear_layers(model)) out[name] = linear;
  return out;
}

// The safetensors file of an adapter directory (PEFT's .bin pickles are not read).
std::string adapter_weights_file(const std::string& dir) {
  const fs::path path = fs::path(dir) / "adapter_model.safetensors";
  if (fs::exists(path)) return path.string();
  if (fs::exists(fs::path(dir) / "adapter_model.bin"))
    throw InputError(dir + "/adapter_model.bin: adapters in PyTorch pickle format are not read",
                     "save it with safetensors: PeftModel.save_pretrained(dir, safe_serialization=True)");
  throw InputError(dir + ": no adapter_model.safetensors (is it a PEFT adapter directory?)");
}

// The module an adapter tensor belongs to, and whether it is A; InputError for anything else.
std::pair<std::string, bool> adapter_module(const std::string& file, const std::string& key) {
  const bool a = ends_with(key, kA), b = ends_with(key, kB);
  if (!starts_with(key, kPrefix) || (!a && !b)) {
    if (key.find("lora_embedding") != std::string::npos || key.find("lora_magnitude") != std::string::npos ||
        key.find("modules_to_save") != std::string::npos)
      throw NotAvailable(file + ": tensor '" + key + "' (an embedding adapter, DoRA or modules_to_save)");
    throw InputError(file + ": tensor '" + key + "' is not a LoRA A or B weight of a PEFT causal-LM adapter");
  }
  const std::string tail = a ? kA : kB;
  return {key.substr(kPrefix.size(), key.size() - kPrefix.size() - tail.size()), a};
}

void init_a(at::Tensor& a, const std::string& init, int64_t r, at::Generator& generator) {
  if (init == "gaussian") {
    a.normal_(0.0, 1.0 / static_cast<double>(r), generator);
  } else {
    // nn.init.kaiming_uniform_(a = √5) on [r, in]: gain √(2 / (1 + 5)), bound gain · √(3 / in) = 1/√in.
    const double bound = 1.0 / std::sqrt(static_cast<double>(a.size(1)));
    a.uniform_(-bound, bound, generator);
  }
}

}  // namespace

double LoraConfig::scale() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

std::vector<std::string> LoraConfig::default_lora_targets() {
  return {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj"};
}

std::vector<std::pair<std::string, LinearImpl*>> linear_layers(CausalLM& model) {
  std::vector<std::pair<std::string, LinearImpl*>> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false))
    if (auto* linear = dynamic_cast<LinearImpl*>(item.value().get())) out.emplace_back(item.key(), linear);
  return out;
}

std::vector<std::string> lora_targets(CausalLM& model, const LoraConfig& config, const std::string& key) {
  const auto layers = linear_layers(model);
  std::set<std::string> chosen, kinds;
  for (const auto& [name, linear] : layers) kinds.insert(last_part(name));
  for (const std::string& target : config.target_modules) {
    bool found = false;
    for (const auto& [name, linear] : layers) {
      const bool match = target == "all-linear" ? name != "lm_head" : name == target || ends_with(name, "." + target);
      if (match) chosen.insert(name);
      found = found || match;
    }
    // The defaults name the layers of every family (q_proj or Phi-3's fused qkv_proj); a family
    // without some of them is fine. A name the user gave must exist.
    const auto defaults = LoraConfig::default_lora_targets();
    if (found || std::find(defaults.begin(), defaults.end(), target) != defaults.end()) continue;
    if (target == "embed_tokens" || target == "lm_head")
      throw InputError(key + ".target_modules: '" + target + "'" +
                           (target == "lm_head" ? " is tied to the embedding in this model" : " is the embedding") +
                           ", which LoRA here does not adapt",
                       "adapt the linear layers: " + join(std::vector<std::string>(kinds.begin(), kinds.end()), ", "));
    throw InputError(key + ".target_modules: '" + target + "' names no linear layer of the model",
                     "its linear layers: " + join(std::vector<std::string>(kinds.begin(), kinds.end()), ", "));
  }
  if (chosen.empty()) throw InputError(key + ".target_modules: no linear layer of the model is a target");
  std::vector<std::string> out;
  for (const auto& [name, linear] : layers)
    if (chosen.count(name)) out.push_back(name);  // module order
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> add_lora(CausalLM& model, const LoraConfig& config, uint64_t seed,
                                                         c10::ScalarType dtype, bool trainable, const std::string& key) {
  if (config.r <= 0) throw InputError(key + ".r: must be > 0 (got " + std::to_string(config.r) + ")");
  if (has_lora(model)) throw RuntimeFailure("add_lora: the model has adapters already");
  const auto targets = lora_targets(model, config, key);
  const auto layers = linear_map(model);
  at::NoGradGuard no_grad;
  for (auto& p : model.parameters()) p.set_requires_grad(false);
  for (const std::string& name : targets) {
    LinearImpl& linear = *layers.at(name);
    auto adapter = std::make_shared<LoraAdapter>();
    const auto options = linear.weight.options().dtype(dtype);
    adapter->A = at::empty({config.r, linear.weight.size(1)}, options).set_requires_grad(trainable);
    adapter->B = at::empty({linear.weight.size(0), config.r}, options).set_requires_grad(trainable);
    adapter->scale = config.scale();
    adapter->dropout = config.dropout;
    linear.lora = adapter;
  }
  reset_lora(model, config, seed);
  return lora_tensors(model);
}

void reset_lora(CausalLM& model, const LoraConfig& config, uint64_t seed) {
  at::NoGradGuard no_grad;
  at::Generator generator = at::detail::createCPUGenerator(seed);
  for (auto& [name, linear] : linear_layers(model)) {
    if (!linear->lora) continue;
    // Drawn in float32 on the CPU, so every device and adapter dtype starts from the same numbers.
    at::Tensor a = at::empty(linear->lora->A.sizes(), at::TensorOptions().dtype(at::kFloat));
    init_a(a, config.init, config.r, generator);
    linear->lora->A.copy_(a);
    linear->lora->B.zero_();
  }
}

std::vector<std::pair<std::string, at::Tensor>> lora_tensors(CausalLM& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [name, linear] : linear_layers(model)) {
    if (!linear->lora) continue;
    out.emplace_back(kPrefix + name + kA, linear->lora->A);
    out.emplace_back(kPrefix + name + kB, linear->lora->B);
  }
  return out;
}

bool has_lora(CausalLM& model) {
  for (auto& [name, linear] : linear_layers(model))
    if (linear->lora) return true;
  return false;
}

namespace {

// adapter_config.json as a LoraConfig; "not yet available" for the kinds this does not apply.
LoraConfig read_lora_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "adapter_config.json").string();
  if (!fs::exists(path)) throw InputError(path + ": missing (is " + dir + " a PEFT adapter directory?)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path + ": not valid JSON: " + e.what());
  }
  const auto flag = [&](const char* name) { return j.contains(name) && j[name].is_boolean() && j[name].get<bool>(); };
  const auto non_empty = [&](const char* name) { return j.contains(name) && !j[name].is_null() && !j[name].empty(); };
  if (j.value("peft_type", std::string()) != "LORA")
    throw InputError(path + ": peft_type '" + j.value("peft_type", std::string()) + "' is not LORA");
  if (flag("use_dora")) throw NotAvailable(path + ": DoRA adapters (use_dora)");
  if (flag("fan_in_fan_out")) throw NotAvailable(path + ": fan_in_fan_out adapters (GPT-2's Conv1D layers)");
  if (j.value("bias", std::string("none")) != "none" || flag("lora_bias")) throw NotAvailable(path + ": adapters with biases");
  if (non_empty("modules_to_save")) throw NotAvailable(path + ": modules_to_save (whole modules saved beside the adapter)");
  if (non_empty("rank_pattern") || non_empty("alpha_pattern"))
    throw NotAvailable(path + ": per-module ranks or alphas (rank_pattern, alpha_pattern)");
  LoraConfig c;
  try {
    c.r = j.at("r").get<int64_t>();
    c.alpha = j.at("lora_alpha").get<double>();
    c.dropout = j.value("lora_dropout", 0.0);
    c.use_rslora = j.value("use_rslora", false);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path + ": " + e.what());
  }
  if (c.r <= 0) throw InputError(path + ": r must be > 0 (got " + std::to_string(c.r) + ")");
  return c;
}

}  // namespace

LoraAdapterFile read_lora_adapter(const std::string& dir) {
  LoraAdapterFile out;
  out.config = read_lora_config(dir);
  out.weights_file = adapter_weights_file(dir);
  const std::string& file = out.weights_file;
  const SafetensorsFile weights = SafetensorsFile::open(file);
  std::map<std::string, size_t> index;  // module -> its place in out.modules
  for (const auto& entry : weights.entries()) {
    const auto [module, is_a] = adapter_module(file, entry.name);
    const auto [it, added] = index.emplace(module, out.modules.size());
    if (added) out.modules.push_back({module, {}, {}});
    const int64_t rank = entry.shape.size() == 2 ? entry.shape[is_a ? 0 : 1] : -1;
    if (rank != out.config.r)
      throw InputError(file + ": tensor '" + entry.name + "' has shape " + shape_text(entry.shape) +
                       ", not of rank r=" + std::to_string(out.config.r) + " (adapter_config.json)");
    (is_a ? out.modules[it->second].A : out.modules[it->second].B) = weights.tensor(entry.name).to(at::kFloat);
  }
  if (out.modules.empty()) throw InputError(file + ": holds no adapter tensors");
  out.config.target_modules.clear();
  for (const auto& m : out.modules) {
    if (!m.A.defined() || !m.B.defined())
      throw InputError(file + ": '" + m.module + "' has " + (m.A.defined() ? "lora_A but no lora_B" : "lora_B but no lora_A"));
    out.config.target_modules.push_back(m.module);
  }
  return out;
}

LoraConfig adapter_lora_config(const std::string& dir) { return read_lora_adapter(dir).config; }

int64_t lora_parameter_count(CausalLM& model, const LoraConfig& config, const std::string& key) {
  const auto layers = linear_map(model);
  int64_t count = 0;
  for (const auto& name : lora_targets(model, config, key)) {
    const auto& w = layers.at(name)->weight;
    count += config.r * (w.size(0) + w.size(1));
  }
  return count;
}

void apply_lora_adapter(CausalLM& model, const std::string& dir, c10::ScalarType dtype) {
  if (has_lora(model)) throw InputError(dir + ": the model has an adapter already; merge one first (logitfuse merge --lora)");
  const LoraAdapterFile adapter = read_lora_adapter(dir);
  const auto layers = linear_map(model);
  // Every module checked before any is attached: a bad adapter leaves the model as it was.
  for (const auto& m : adapter.modules) {
    const auto it = layers.find(m.module);
    if (it == layers.end())
      throw InputError(adapter.weights_file + ": tensor '" + kPrefix + m.module + kA + "' adapts '" + m.module +
                           "', which the model does not have",
                       "was the adapter trained on another base?");
    const at::Tensor& w = it->second->weight;
    if (m.A.size(1) != w.size(1) || m.B.size(0) != w.size(0))
      throw InputError(adapter.weights_file + ": '" + m.module + "' has A " + shape_text(m.A.sizes()) + " and B " +
                           shape_text(m.B.sizes()) + ", the model's '" + m.module + "' with r=" +
                           std::to_string(adapter.config.r) + " needs A [" + std::to_string(adapter.config.r) + ", " +
                           std::to_string(w.size(1)) + "] and B [" + std::to_string(w.size(0)) + ", " +
                           std::to_string(adapter.config.r) + "]",
                       "was the adapter trained on another base?");
  }
  for (const auto& m : adapter.modules) {
    LinearImpl& linear = *layers.at(m.module);
    auto attached = std::make_shared<LoraAdapter>();
    attached->A = m.A.to(linear.weight.options().dtype(dtype));
    attached->B = m.B.to(linear.weight.options().dtype(dtype));
    attached->scale = adapter.config.scale();
    linear.lora = attached;
  }
  spdlog::debug("applied adapter {} ({} modules, r={}, scale {})", dir, adapter.modules.size(), adapter.config.r,
                adapter.config.scale());
}

void load_lora_weights(CausalLM& model, const std::string& dir) {
  const std::string file = adapter_weights_file(dir);
  const SafetensorsFile weights = SafetensorsFile::open(file);
  at::NoGradGuard no_grad;
  std::set<std::string> used;
  for (auto& [name, tensor] : lora_tensors(model)) {
    if (!weights.contains(name)) throw InputError(file + ": no tensor '" + name + "'", "was it written for this recipe's student.lora?");
    const auto& entry = weights.entry(name);
    if (at::IntArrayRef(entry.shape) != tensor.sizes())
      throw InputError(file + ": tensor '" + name + "' has shape " + shape_text(entry.shape) + ", the model's adapter " +
                       shape_text(tensor.sizes()), "student.lora.r must be the adapter's r");
    tensor.copy_(weights.tensor(name));
    used.insert(name);
  }
  for (const auto& entry : weights.entries())
    if (!used.count(entry.name))
      throw InputError(file + ": tensor '" + entry.name + "' adapts a module that student.lora.target_modules leaves out");
}

void save_lora_adapter(CausalLM& model, const LoraConfig& config, const std::string& dir, const AdapterSaveOptions& options) {
  std::set<std::string> kinds;
  for (auto& [name, linear] : linear_layers(model))
    if (linear->lora) kinds.insert(last_part(name));
  const nlohmann::json j = {
      {"peft_type", "LORA"},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", options.base_model},
      {"r", config.r},
      {"lora_alpha", config.alpha},
      {"lora_dropout", config.dropout},
      {"target_modules", std::vector<std::string>(kinds.begin(), kinds.end())},
      {"use_rslora", config.use_rslora},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", config.init == "gaussian" ? nlohmann::json("gaussian") : nlohmann::json(true)},
      {"modules_to_save", nullptr},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", nlohmann::json::object()},
      {"alpha_pattern", nlohmann::json::object()},
      {"use_dora", false},
      {"revision", nullptr},
  };
  NamedTensors tensors;
  for (auto& [name, t] : lora_tensors(model)) tensors.emplace_back(name, t.detach().to(at::kCPU, at::kFloat).contiguous());
  write_directory_atomic(dir, [&](const std::string& staging) {
    write_safetensors((fs::path(staging) / "adapter_model.safetensors").string(), tensors, {{"format", "pt"}});
    write_file_atomic((fs::path(staging) / "adapter_config.json").string(), j.dump(2) + "\n");
    copy_tokenizer_files(options.tokenizer_from, staging);
  });
}

}  // namespace lf
