#include "io/safetensors.h"

#include <ATen/Functions.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "io/file.h"

namespace lf {

namespace {

struct DtypeInfo {
  const char* name;
  c10::ScalarType type;
  size_t size;
};

const DtypeInfo kDtypes[] = {
    {"BOOL", c10::ScalarType::Bool, 1},          {"U8", c10::ScalarType::Byte, 1},
    {"I8", c10::ScalarType::Char, 1},            {"I16", c10::ScalarType::Short, 2},
    {"U16", c10::ScalarType::UInt16, 2},         {"I32", c10::ScalarType::Int, 4},
    {"U32", c10::ScalarType::UInt32, 4},         {"I64", c10::ScalarType::Long, 8},
    {"U64", c10::ScalarType::UInt64, 8},         {"F16", c10::ScalarType::Half, 2},
    {"BF16", c10::ScalarType::BFloat16, 2},      {"F32", c10::ScalarType::Float, 4},
    {"F64", c10::ScalarType::Double, 8},         {"F8_E4M3", c10::ScalarType::Float8_e4m3fn, 1},
    {"F8_E5M2", c10::ScalarType::Float8_e5m2, 1},
};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

}  // namespace

c10::ScalarType safetensors_dtype(const std::string& name) {
  const DtypeInfo* d = find_dtype(name);
  if (!d) throw InputError("unknown safetensors dtype '" + name + "'");
  return d->type;
}

std::string safetensors_dtype_name(c10::ScalarType type) {
  for (const auto& d : kDtypes)
    if (d.type == type) return d.name;
  throw InputError(std::string("dtype ") + c10::toString(type) + " cannot be stored in safetensors");
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile out;
  out.file_ = MappedFile::open(path);
  out.header_ = parse_safetensors_header(out.file_->data(), out.file_->size(), path);
  return out;
}

const std::string& SafetensorsFile::path() const { return file_->path(); }
const uint8_t* SafetensorsFile::data() const { return file_->data(); }
uint64_t SafetensorsFile::size() const { return file_->size(); }

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = header_.index.find(name);
  if (it == header_.index.end()) throw InputError(path() + ": no tensor named '" + name + "'");
  return header_.entries[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const c10::ScalarType type = safetensors_dtype(e.dtype);
  const size_t element = safetensors_dtype_size(e.dtype);
  const uint8_t* ptr = file_->data() + header_.data_start + e.begin;
  auto options = at::TensorOptions().dtype(type).device(at::kCPU);
  if (e.end == e.begin) return at::empty(e.shape, options);
  if (reinterpret_cast<uintptr_t>(ptr) % element == 0) {
    auto keep_alive = file_;  // the view owns a reference to the mapping
    return at::from_blob(const_cast<uint8_t*>(ptr), e.shape, [keep_alive](void*) {}, options);
  }
  at::Tensor copy = at::empty(e.shape, options);
  std::memcpy(copy.data_ptr(), ptr, e.end - e.begin);
  return copy;
}

SafetensorsCheckpoint SafetensorsCheckpoint::open_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  SafetensorsCheckpoint out;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";
  std::vector<std::string> files;
  if (fs::exists(index_path)) {
    const SafetensorsIndex index = parse_safetensors_index(read_text_file(index_path.string()), index_path.string());
    const std::map<std::string, std::string>& weight_map = index.weight_map;
    files = index.files;
    std::map<std::string, size_t> file_index;
    for (const auto& f : files) {
      check_safetensors_shard_name(f, index_path.string());
      file_index[f] = out.files_.size();
      out.files_.push_back(SafetensorsFile::open((fs::path(dir) / f).string()));
    }
    for (const auto& [name, f] : weight_map) {
      const auto& file = out.files_[file_index[f]];
      if (!file.contains(name))
        throw InputError(index_path.string() + ": tensor '" + name + "' is listed in " + f + " but not stored there");
      out.where_[name] = file_index[f];
    }
  } else if (fs::exists(single_path)) {
    out.files_.push_back(SafetensorsFile::open(single_path.string()));
    for (const auto& e : out.files_[0].entries()) out.where_[e.name] = 0;
  } else {
    throw InputError(dir + ": no model.safetensors or model.safetensors.index.json",
                     "logitfuse reads Hugging Face checkpoints in safetensors format");
  }
  return out;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : where_) out.push_back(name);
  return out;
}

at::Tensor SafetensorsCheckpoint::tensor(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw InputError("checkpoint has no tensor named '" + name + "'");
  return files_[it->second].tensor(name);
}

const SafetensorsEntry& SafetensorsCheckpoint::entry(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw InputError("checkpoint has no tensor named '" + name + "'");
  return files_[it->second].entry(name);
}

struct SafetensorsStreamWriter::Impl {
  std::string path;
  std::vector<Spec> specs;
  size_t next = 0;
  AtomicFileWriter file;
  Impl(const std::string& p, std::vector<Spec> s) : path(p), specs(std::move(s)), file(p) {}
};

SafetensorsStreamWriter::SafetensorsStreamWriter(const std::string& path, const std::vector<Spec>& specs,
                                                 const std::map<std::string, std::string>& metadata)
    : impl_(std::make_unique<Impl>(path, specs)) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& spec : specs) {
    uint64_t bytes = c10::elementSize(spec.dtype);
    for (int64_t d : spec.shape) bytes *= static_cast<uint64_t>(d);
    header[spec.name] = {{"dtype", safetensors_dtype_name(spec.dtype)},
                         {"shape", spec.shape},
                         {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  while ((8 + header_text.size()) % 8 != 0) header_text.push_back(' ');
  uint8_t size_bytes[8];
  const uint64_t n = header_text.size();
  for (int i = 0; i < 8; ++i) size_bytes[i] = static_cast<uint8_t>(n >> (8 * i));
  impl_->file.write(size_bytes, 8);
  impl_->file.write(header_text.data(), header_text.size());
}

SafetensorsStreamWriter::~SafetensorsStreamWriter() = default;

void SafetensorsStreamWriter::write(const at::Tensor& tensor) {
  if (impl_->next >= impl_->specs.size()) throw RuntimeFailure(impl_->path + ": more tensors written than declared");
  const Spec& spec = impl_->specs[impl_->next];
  if (tensor.scalar_type() != spec.dtype || tensor.sizes() != at::IntArrayRef(spec.shape))
    throw RuntimeFailure(impl_->path + ": tensor '" + spec.name + "' does not match its declared dtype/shape");
  at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  impl_->file.write(t.data_ptr(), t.numel() * t.element_size());
  ++impl_->next;
}

void SafetensorsStreamWriter::finish() {
  if (impl_->next != impl_->specs.size()) throw RuntimeFailure(impl_->path + ": fewer tensors written than declared");
  impl_->file.commit();
}

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsStreamWriter::Spec> specs;
  for (const auto& [name, tensor] : tensors) specs.push_back({name, tensor.scalar_type(), tensor.sizes().vec()});
  SafetensorsStreamWriter writer(path, specs, metadata);
  for (const auto& named : tensors) writer.write(named.second);
  writer.finish();
}

namespace {

// transformers' sharding rule: tensors in order, a new shard when the next would pass the limit (a
// tensor larger than the limit gets a shard of its own). Returns each shard's [begin, end) indices.
std::vector<std::pair<size_t, size_t>> plan_shards(const std::vector<uint64_t>& bytes, uint64_t max_shard_bytes) {
  std::vector<std::pair<size_t, size_t>> shards{{0, 0}};
  uint64_t current = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (shards.back().second > shards.back().first && current + bytes[i] > max_shard_bytes) {
      shards.emplace_back(i, i);
      current = 0;
    }
    shards.back().second = i + 1;
    current += bytes[i];
  }
  return shards;
}

std::string shard_file_name(size_t index, size_t count) {
  if (count == 1) return "model.safetensors";
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

std::string write_shard_index(const std::string& dir, const std::vector<std::string>& names,
                              const std::vector<std::pair<size_t, size_t>>& shards, uint64_t total) {
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t s = 0; s < shards.size(); ++s)
    for (size_t i = shards[s].first; i < shards[s].second; ++i) weight_map[names[i]] = shard_file_name(s, shards.size());
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  const std::string index_path = (std::filesystem::path(dir) / "model.safetensors.index.json").string();
  write_file_atomic(index_path, index.dump(2) + "\n");
  return index_path;
}

}  // namespace

std::vector<std::string> write_safetensors_sharded(const std::string& dir, const NamedTensors& tensors,
                                                   uint64_t max_shard_bytes,
                                                   const std::map<std::string, std::string>& metadata) {
  namespace fs = std::filesystem;
  std::vector<uint64_t> bytes;
  std::vector<std::string> names;
  uint64_t total = 0;
  for (const auto& [name, t] : tensors) {
    bytes.push_back(t.numel() * t.element_size());
    names.push_back(name);
    total += bytes.back();
  }
  const auto shards = plan_shards(bytes, max_shard_bytes);
  std::vector<std::string> written;
  for (size_t s = 0; s < shards.size(); ++s) {
    NamedTensors part(tensors.begin() + shards[s].first, tensors.begin() + shards[s].second);
    written.push_back((fs::path(dir) / shard_file_name(s, shards.size())).string());
    write_safetensors(written.back(), part, metadata);
  }
  if (shards.size() > 1) written.push_back(write_shard_index(dir, names, shards, total));
  return written;
}

std::vector<std::string> write_safetensors_sharded_stream(
    const std::string& dir, const std::vector<SafetensorsStreamWriter::Spec>& specs, uint64_t max_shard_bytes,
    const std::function<void(const std::function<void(const at::Tensor&)>&)>& produce,
    const std::map<std::string, std::string>& metadata) {
  namespace fs = std::filesystem;
  std::vector<uint64_t> bytes;
  std::vector<std::string> names;
  uint64_t total = 0;
  for (const auto& spec : specs) {
    uint64_t n = c10::elementSize(spec.dtype);
    for (int64_t d : spec.shape) n *= static_cast<uint64_t>(d);
    bytes.push_back(n);
    names.push_back(spec.name);
    total += n;
  }
  const auto shards = plan_shards(bytes, max_shard_bytes);
  std::vector<std::string> written;
  std::unique_ptr<SafetensorsStreamWriter> writer;
  size_t shard = 0, index = 0;
  auto open = [&] {
    written.push_back((fs::path(dir) / shard_file_name(shard, shards.size())).string());
    writer = std::make_unique<SafetensorsStreamWriter>(
        written.back(),
        std::vector<SafetensorsStreamWriter::Spec>(specs.begin() + shards[shard].first, specs.begin() + shards[shard].second),
        metadata);
  };
  open();
  produce([&](const at::Tensor& tensor) {
    if (index >= specs.size()) throw RuntimeFailure(dir + ": more tensors than announced");
    writer->write(tensor);
    if (++index == shards[shard].second) {
      writer->finish();
      if (++shard < shards.size()) open();
    }
  });
  if (index != specs.size())
    throw RuntimeFailure(dir + ": " + std::to_string(index) + " of " + std::to_string(specs.size()) + " tensors written");
  if (shards.size() > 1) written.push_back(write_shard_index(dir, names, shards, total));
  return written;
}

}  // namespace lf
