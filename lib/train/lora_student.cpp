#include "train/lora_student.h"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "core/error.h"
#include "model/checkpoint.h"

namespace lf {

LoraConfig student_lora_config(const Recipe& recipe) {
  if (!recipe.student.lora) return adapter_lora_config(*recipe.student.adapter);
  const LoraRecipe& l = *recipe.student.lora;
  LoraConfig c;
  c.r = l.r;
  c.alpha = l.alpha;
  c.dropout = l.dropout;
  c.target_modules = l.target_modules;
  c.use_rslora = l.use_rslora;
  c.init = l.init;
  return c;
}


void attach_student_adapters(Participant& student, const Recipe& recipe) {
  const LoraConfig config = student_lora_config(recipe);
  const std::string key = recipe.student.lora ? "student.lora" : "student.adapter";
  const auto adapters = add_lora(*student.model, config, static_cast<uint64_t>(recipe.run.seed), at::kFloat,
                                 /*trainable=*/true, key);
  if (recipe.student.adapter) load_lora_weights(*student.model, *recipe.student.adapter);
  int64_t trainable = 0, frozen = 0;
  for (const auto& [name, t] : adapters) trainable += t.numel();
  for (const auto& p : student.model->parameters()) frozen += p.numel();
  spdlog::info("LoRA student: r={} alpha={} scale {:.4g}{}, {} adapter tensors, {} trainable parameters ({:.3f}% of the "
               "{} frozen in {}){}",
               config.r, config.alpha, config.scale(), config.use_rslora ? " (rsLoRA)" : "", adapters.size(), trainable,
               100.0 * static_cast<double>(trainable) / static_cast<double>(std::max<int64_t>(frozen, 1)), frozen,
               recipe.student.dtype, recipe.student.adapter ? ", continuing " + *recipe.student.adapter : "");
}

StudentWeights lora_student_weights(Participant& student, const Recipe& recipe, Communicator& comm) {
  const LoraConfig config = student_lora_config(recipe);
  CausalLM* model = student.model.get();
  const std::string base = recipe.student.path, tokenizer = student.tokenizer_dir;
  const std::string start = recipe.student.adapter.value_or("");
  const auto seed = static_cast<uint64_t>(recipe.run.seed);
  return {[model, config, base, tokenizer, &comm](const std::string& dir, const SaveOptions&) {
            // Adapters stay float32 in final/ too (PEFT's own choice for adapters of a bf16 base).
            if (comm.is_main()) save_lora_adapter(*model, config, dir, {base, tokenizer});
          },
          [model, config, start, seed](const std::string& dir) {
            if (std::filesystem::exists(std::filesystem::path(dir) / "adapter_config.json")) {
              load_lora_weights(*model, dir);
            } else if (!start.empty()) {
              load_lora_weights(*model, start);
            } else {
              reset_lora(*model, config, seed);
            }
          }};
}

}  // namespace lf
