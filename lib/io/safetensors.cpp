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

// Larger headers are refused before parsing: the reference implementation uses the same bound.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

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

size_t safetensors_dtype_size(const std::string& name) {
  const DtypeInfo* d = find_dtype(name);
  if (!d) throw InputError("unknown safetensors dtype '" + name + "'");
  return d->size;
}

std::string safetensors_dtype_name(c10::ScalarType type) {
  for (const auto& d : kDtypes)
    if (d.type == type) return d.name;
  throw InputError(std::string("dtype ") + c10::toString(type) + " cannot be stored in safetensors");
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile out;
  out.file_ = MappedFile::open(path);
  const uint64_t file_size = out.file_->size();
  auto fail = [&](const std::string& what) -> InputError {
    return InputError(path + ": malformed safetensors file: " + what);
  };
  if (file_size < 8) throw fail("truncated (" + std::to_string(file_size) + " bytes, no header size)");
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | out.file_->data()[i];
  if (header_size > kMaxHeaderBytes) throw fail("header size " + std::to_string(header_size) + " is too large");
  if (header_size > file_size - 8)
    throw fail("truncated (header of " + std::to_string(header_size) + " bytes, file has " +
               std::to_string(file_size - 8) + " after the size)");
  out.data_start_ = 8 + header_size;
  const uint64_t data_size = file_size - out.data_start_;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(out.file_->data() + 8, out.file_->data() + 8 + header_size);
  } catch (const nlohmann::json::exception& e) {
    throw fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw fail("header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it->is_object()) throw fail("__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) throw fail("__metadata__." + m.key() + " is not a string");
        out.metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) { return fail("tensor '" + name + "': " + what); };
    const auto& value = *it;
    if (!value.is_object()) throw bad("entry is not an object");
    if (!value.contains("dtype") || !value["dtype"].is_string()) throw bad("missing dtype");
    if (!value.contains("shape") || !value["shape"].is_array()) throw bad("missing shape");
    if (!value.contains("data_offsets") || !value["data_offsets"].is_array() || value["data_offsets"].size() != 2)
      throw bad("data_offsets must be [begin, end]");
    SafetensorsEntry entry;
    entry.name = name;
    entry.dtype = value["dtype"].get<std::string>();
    const DtypeInfo* dtype = find_dtype(entry.dtype);
    if (!dtype) throw bad("unknown dtype '" + entry.dtype + "'");
    uint64_t numel = 1;
    for (const auto& dim : value["shape"]) {
      if (!dim.is_number_unsigned() && !(dim.is_number_integer() && dim.get<int64_t>() >= 0))
        throw bad("shape has a negative or non-integer dimension");
      uint64_t d = dim.get<uint64_t>();
      if (d != 0 && numel > UINT64_MAX / d) throw bad("shape overflows");
      numel *= d;
      entry.shape.push_back(static_cast<int64_t>(d));
    }
    for (const auto& off : value["data_offsets"])
      if (!off.is_number_unsigned() && !(off.is_number_integer() && off.get<int64_t>() >= 0))
        throw bad("data_offsets are not non-negative integers");
    entry.begin = value["data_offsets"][0].get<uint64_t>();
    entry.end = value["data_offsets"][1].get<uint64_t>();
    if (entry.begin > entry.end) throw bad("data_offsets begin > end");
    if (entry.end > data_size)
      throw bad("data_offsets [" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) +
                "] out of range (data section has " + std::to_string(data_size) + " bytes)");
    if (numel > UINT64_MAX / dtype->size || numel * dtype->size != entry.end - entry.begin)
      throw bad("dtype " + entry.dtype + " and shape need " + std::to_string(numel * dtype->size) +
                " bytes but data_offsets span " + std::to_string(entry.end - entry.begin));
    out.index_[name] = out.entries_.size();
    out.entries_.push_back(std::move(entry));
  }

  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : out.entries_) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](auto* a, auto* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto* prev = by_offset[i - 1];
    const auto* cur = by_offset[i];
    if (cur->begin < prev->end && cur->end > cur->begin && prev->end > prev->begin)
      throw fail("tensors '" + prev->name + "' and '" + cur->name + "' overlap");
  }
  return out;
}

const std::string& SafetensorsFile::path() const { return file_->path(); }

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw InputError(path() + ": no tensor named '" + name + "'");
  return entries_[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const c10::ScalarType type = safetensors_dtype(e.dtype);
  const size_t element = safetensors_dtype_size(e.dtype);
  const uint8_t* ptr = file_->data() + data_start_ + e.begin;
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
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(read_text_file(index_path.string()));
    } catch (const nlohmann::json::exception& e) {
      throw InputError(index_path.string() + ": not valid JSON: " + e.what());
    }
    if (!index.contains("weight_map") || !index["weight_map"].is_object())
      throw InputError(index_path.string() + ": missing object 'weight_map'");
    std::map<std::string, std::string> weight_map;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it->is_string()) throw InputError(index_path.string() + ": weight_map." + it.key() + " is not a file name");
      weight_map[it.key()] = it->get<std::string>();
      if (std::find(files.begin(), files.end(), it->get<std::string>()) == files.end())
        files.push_back(it->get<std::string>());
    }
    std::map<std::string, size_t> file_index;
    for (const auto& f : files) {
      if (f.find('/') != std::string::npos || f == "..")
        throw InputError(index_path.string() + ": shard name '" + f + "' must be a file in the same folder");
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
