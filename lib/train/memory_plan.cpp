#include "train/memory_plan.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <functional>

#ifdef LOGITFUSE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "core/error.h"
#include "core/strings.h"
#include "model/lora.h"
#include "model/transformer.h"
#include "train/lora_student.h"

namespace lf {

namespace {
// The student's device as the plan sees it (without touching a GPU).
bool plans_for_gpu(const Recipe& recipe) {
  return recipe.run.device.rfind("cuda", 0) == 0 || (recipe.run.device == "auto" && at::hasCUDA());
}
}  // namespace

double device_memory_bytes(const Recipe& recipe, int64_t local_world_size, std::string* source) {
  if (recipe.run.memory_gb) {
    *source = "run.memory_gb";
    return *recipe.run.memory_gb * 1e9;
  }
  const bool gpu = plans_for_gpu(recipe);
  if (gpu) {
#ifdef LOGITFUSE_HAVE_CUDA
    // The properties need no CUDA context (cudaMemGetInfo would open one on the current device).
    const size_t colon = recipe.run.device.find(':');
    const int index = colon == std::string::npos ? 0 : std::atoi(recipe.run.device.c_str() + colon + 1);
    cudaDeviceProp properties{};
    if (at::hasCUDA() && cudaGetDeviceProperties(&properties, index) == cudaSuccess) {
      *source = "the memory of cuda:" + std::to_string(index);
      return static_cast<double>(properties.totalGlobalMem);
    }
#endif
    *source = "unknown (no GPU here; set run.memory_gb)";
    return 0;
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return 0;
  *source = "host RAM / " + std::to_string(std::max<int64_t>(1, local_world_size)) + " rank(s) on this node";
  return static_cast<double>(pages) * static_cast<double>(page) / static_cast<double>(std::max<int64_t>(1, local_world_size));
}

namespace {

double dtype_bytes(const std::string& dtype) { return dtype == "fp32" || dtype == "float32" ? 4.0 : 2.0; }

// The adapters student.lora (or student.adapter) adds to the student, counted on a meta-device model.
int64_t lora_trainable_parameters(const Recipe& recipe, const ModelConfig& student) {
  CausalLM meta(student, at::TensorOptions().device(at::kMeta));
  return lora_parameter_count(meta, student_lora_config(recipe), recipe.student.lora ? "student.lora" : "student.adapter");
}

using AddItem = std::function<void(std::string name, double bytes, std::string fix)>;

// The student's weights, gradients and AdamW state (P parameters): full training keeps float32 master
// weights; LoRA keeps the base frozen in student.dtype and trains float32 adapters (ZeRO-1/2 shard
// their AdamW state; ZeRO-3 is refused with LoRA).
void add_student_state(MemoryPlan& plan, const Recipe& recipe, double P, int64_t adapters, const AddItem& add) {
  const double N = static_cast<double>(plan.world_size);
  const bool zero3 = plan.zero == 3;
  if (trains_adapters(recipe)) {
    const double A = static_cast<double>(adapters);
    plan.parameters.emplace_back("student adapters (trainable)", adapters);
    add("student base (frozen, " + recipe.student.dtype + ")", dtype_bytes(recipe.student.dtype) * P, "student.dtype: bf16");
    add("LoRA adapters and their gradients (fp32)", 8 * A, "student.lora.r");
    add("AdamW state of the adapters (fp32, 2 per parameter)", 8 * (plan.zero == 0 ? A : std::ceil(A / N)),
        plan.zero == 0 ? "dist.zero 1" : "more ranks");
    return;
  }
  add("student parameters (fp32 master weights)", 4 * (zero3 ? std::ceil(P / N) : P), zero3 ? "more ranks" : "dist.zero 3");
  add("student gradients (fp32)", 4 * (zero3 ? std::ceil(P / N) : P), zero3 ? "more ranks" : "dist.zero 3");
  add("AdamW state (fp32, 2 per parameter)", 8 * (plan.zero == 0 ? P : std::ceil(P / N)),
      plan.zero == 0 ? "dist.zero 1" : "more ranks");
}

// `footprints`: the student's, then each teacher's, and `adapters`: a LoRA student's trainable
// parameters (built once: each counted on a model on the meta device).
void build_items(MemoryPlan& plan, const Recipe& recipe, const ModelConfig& student,
                 const std::vector<ModelConfig>& teachers, const std::vector<ModelFootprint>& footprints,
                 int64_t adapters) {
  plan.items.clear();
  plan.parameters.clear();
  const double N = static_cast<double>(plan.world_size);
  const ModelFootprint& s = footprints[0];
  const double P = static_cast<double>(s.params);
  plan.parameters.emplace_back("student", s.params);
  const bool zero3 = plan.zero == 3;
  const bool bf16 = recipe.train.precision == "bf16";
  const bool gpu = plans_for_gpu(recipe);
  const AddItem add = [&](std::string name, double bytes, std::string fix) {
    if (bytes > 0) plan.items.push_back({std::move(name), bytes, std::move(fix)});
  };
  add_student_state(plan, recipe, P, adapters, add);
  const double unit = static_cast<double>(s.largest_unit), head = static_cast<double>(s.head);
  // In the backward: a layer whole, the next one prefetched, its gradient and the reduce-scatter's
  // input; in the loss: the head and its gradient. One rank gathers nothing: its shard is the unit.
  if (zero3)
    add("gathered units (a layer and the LM head, with gradients)",
        plan.world_size > 1 ? 4 * std::max(4 * unit, unit + 2 * head) : 4 * std::max(2 * unit, head),
        "more ranks do not shrink this");
  if (bf16 && !(trains_adapters(recipe) && recipe.student.dtype != "fp32"))
    add("bf16 weight copies (autocast)", 2 * (zero3 ? unit + head : P), "dist.zero 3");

  // Activations: each layer's input kept for the backward (with checkpointing, implied at ZeRO-3), one
  // layer's internals at a time; without checkpointing every layer's internals.
  const double B = static_cast<double>(recipe.train.micro_batch_size), T = static_cast<double>(recipe.data.max_length);
  const double a = bf16 ? 2.0 : 4.0;
  const double H = static_cast<double>(student.hidden_size), I = static_cast<double>(student.intermediate_size);
  const double L = static_cast<double>(student.num_layers);
  const double scores = gpu ? 0.0 : 2 * 4 * B * static_cast<double>(student.num_heads) * T * T;  // CPU: math attention
  const double layer = B * T * (8 * H + 4 * I) * a + scores;
  const bool checkpointing = zero3 || recipe.train.activation_checkpointing;
  add("student activations", checkpointing ? B * T * H * a * (L + 2) + layer : L * layer + 2 * B * T * H * 4,
      checkpointing ? "train.micro_batch_size or data.max_length" : "train.activation_checkpointing: true");
  const double chunk = static_cast<double>(recipe.train.logit_chunk_size);
  add("student logit chunks (fp32)", 4 * 4 * chunk * static_cast<double>(student.vocab_size), "train.logit_chunk_size");

  for (size_t t = 0; t < teachers.size(); ++t) {
    const auto& rc = recipe.teachers[t];
    const Placement placement = plan.placements[t];
    if (placement == Placement::kCache || placement == Placement::kServer) continue;
    const ModelFootprint& f = footprints[t + 1];
    plan.parameters.emplace_back("teacher " + rc.name, f.params);
    const double b = dtype_bytes(rc.dtype), Pt = static_cast<double>(f.params);
    const std::string key = "teachers." + std::to_string(t);
    if (placement == Placement::kShard)
      add("teacher " + rc.name + " (" + rc.dtype + ", sharded)",
          b * (std::ceil(Pt / N) + static_cast<double>(f.largest_unit) + static_cast<double>(f.head)),
          "more ranks, or " + key + ".logits_cache");
    else
      add("teacher " + rc.name + " (" + rc.dtype + ", replicated)", b * Pt,
          key + ".placement: shard, or " + key + ".logits_cache");
    const double Ht = static_cast<double>(teachers[t].hidden_size), It = static_cast<double>(teachers[t].intermediate_size);
    const double t_scores = gpu ? 0.0 : 4 * B * static_cast<double>(teachers[t].num_heads) * T * T;
    add("teacher " + rc.name + " activations and logit chunks",
        B * T * Ht * b * 2 + B * T * (4 * Ht + 2 * It) * b + t_scores + 2 * 4 * chunk * static_cast<double>(teachers[t].vocab_size),
        "train.micro_batch_size or train.logit_chunk_size");
  }
  // The communication library's own buffers with several ranks: NCCL's per-channel buffers on a GPU;
  // MPI's shared-memory segments on CPU (about 35 MiB per rank measured with OpenMPI's vader).
  if (plan.world_size > 1)
    add(gpu ? "NCCL buffers (estimate)" : "MPI buffers (estimate)", gpu ? 0.5e9 : 36.0e6, "");
  // LibTorch's own allocations (kernels, thread pools; on a GPU the CUDA context and allocator slack).
  add(gpu ? "runtime (CUDA context, workspaces; estimate)" : "runtime (LibTorch; estimate)",
      gpu ? 2.0e9 : 0.3e9, "");
}

}  // namespace

MemoryPlan plan_memory(const Recipe& recipe, const ModelConfig& student, const std::vector<ModelConfig>& teachers,
                       int64_t world_size, double limit, const std::string& limit_source) {
  MemoryPlan plan;
  plan.world_size = world_size;
  plan.zero = recipe.dist.zero;
  plan.limit = limit;
  plan.limit_source = limit_source;
  std::vector<size_t> automatic;
  for (size_t t = 0; t < recipe.teachers.size(); ++t) {
    const auto& rc = recipe.teachers[t];
    if (rc.placement != "auto") plan.placements.push_back(parse_placement(rc.placement));
    else if (rc.logits_cache) plan.placements.push_back(Placement::kCache);
    else if (rc.server) plan.placements.push_back(Placement::kServer);
    else {
      plan.placements.push_back(Placement::kReplicate);
      automatic.push_back(t);
    }
  }
  std::vector<ModelFootprint> footprints{model_footprint(student)};
  for (const auto& t : teachers) footprints.push_back(model_footprint(t));
  const int64_t adapters = trains_adapters(recipe) ? lora_trainable_parameters(recipe, student) : 0;
  build_items(plan, recipe, student, teachers, footprints, adapters);
  // Largest automatic teachers first: shard while the plan does not fit.
  std::sort(automatic.begin(), automatic.end(),
            [&](size_t a, size_t b) { return footprints[a + 1].params > footprints[b + 1].params; });
  for (size_t t : automatic) {
    if (limit <= 0 || world_size < 2 || plan.total() <= limit) break;
    plan.placements[t] = Placement::kShard;
    build_items(plan, recipe, student, teachers, footprints, adapters);
  }
  return plan;
}

MemoryPlan plan_memory(const Recipe& recipe, int64_t world_size, int64_t local_world_size) {
  const ModelConfig student = load_model_config(recipe.student.path);
  std::vector<ModelConfig> teachers;
  for (const auto& t : recipe.teachers) teachers.push_back(load_model_config(t.path));
  std::string source;
  const double limit = device_memory_bytes(recipe, local_world_size, &source);
  return plan_memory(recipe, student, teachers, world_size, limit, source);
}

}  // namespace lf
