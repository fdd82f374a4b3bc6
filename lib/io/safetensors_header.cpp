#include "io/safetensors_header.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include "core/error.h"

namespace lf {

namespace {

// Larger headers are refused before parsing: the reference implementation uses the same bound.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeSize {
  const char* name;
  size_t size;
};

// The names io/safetensors.cpp maps to ATen scalar types (the two lists must stay in step).
const DtypeSize kDtypeSizes[] = {{"BOOL", 1}, {"U8", 1},  {"I8", 1},   {"I16", 2},  {"U16", 2},
                                 {"I32", 4},  {"U32", 4}, {"I64", 8},  {"U64", 8},  {"F16", 2},
                                 {"BF16", 2}, {"F32", 4}, {"F64", 8},  {"F8_E4M3", 1}, {"F8_E5M2", 1}};

const DtypeSize* find_dtype_size(const std::string& name) {
  for (const auto& d : kDtypeSizes)
    if (name == d.name) return &d;
  return nullptr;
}

}  // namespace

bool safetensors_dtype_known(const std::string& name) { return find_dtype_size(name) != nullptr; }

size_t safetensors_dtype_size(const std::string& name) {
  const DtypeSize* d = find_dtype_size(name);
  if (!d) throw InputError("unknown safetensors dtype '" + name + "'");
  return d->size;
}

namespace {

// One tensor's header entry, checked against the data section's size: dtype, shape and offsets
// agree, and the bytes lie inside the file. `bad` makes the error naming the tensor.
template <class Bad>
SafetensorsEntry parse_entry(const std::string& name, const nlohmann::json& value, uint64_t data_size, const Bad& bad) {
  if (!value.is_object()) throw bad("entry is not an object");
  if (!value.contains("dtype") || !value["dtype"].is_string()) throw bad("missing dtype");
  if (!value.contains("shape") || !value["shape"].is_array()) throw bad("missing shape");
  if (!value.contains("data_offsets") || !value["data_offsets"].is_array() || value["data_offsets"].size() != 2)
    throw bad("data_offsets must be [begin, end]");
  SafetensorsEntry entry;
  entry.name = name;
  entry.dtype = value["dtype"].get<std::string>();
  const DtypeSize* dtype = find_dtype_size(entry.dtype);
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
  return entry;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* data, uint64_t file_size, const std::string& path) {
  SafetensorsHeader out;
  auto fail = [&](const std::string& what) -> InputError {
    return InputError(path + ": malformed safetensors file: " + what);
  };
  if (file_size < 8) throw fail("truncated (" + std::to_string(file_size) + " bytes, no header size)");
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | data[i];
  if (header_size > kMaxHeaderBytes) throw fail("header size " + std::to_string(header_size) + " is too large");
  if (header_size > file_size - 8)
    throw fail("truncated (header of " + std::to_string(header_size) + " bytes, file has " +
               std::to_string(file_size - 8) + " after the size)");
  out.data_start = 8 + header_size;
  const uint64_t data_size = file_size - out.data_start;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(data + 8, data + 8 + header_size);
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
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) { return fail("tensor '" + name + "': " + what); };
    out.index[name] = out.entries.size();
    out.entries.push_back(parse_entry(name, *it, data_size, bad));
  }

  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : out.entries) by_offset.push_back(&e);
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

SafetensorsIndex parse_safetensors_index(const std::string& text, const std::string& index_path) {
  SafetensorsIndex out;
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(index_path + ": not valid JSON: " + e.what());
  }
  if (!index.contains("weight_map") || !index["weight_map"].is_object())
    throw InputError(index_path + ": missing object 'weight_map'");
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    if (!it->is_string()) throw InputError(index_path + ": weight_map." + it.key() + " is not a file name");
    out.weight_map[it.key()] = it->get<std::string>();
    if (std::find(out.files.begin(), out.files.end(), it->get<std::string>()) == out.files.end())
      out.files.push_back(it->get<std::string>());
  }
  return out;
}

void check_safetensors_shard_name(const std::string& file, const std::string& index_path) {
  if (file.find('/') != std::string::npos || file == "..")
    throw InputError(index_path + ": shard name '" + file + "' must be a file in the same folder");
}

}  // namespace lf
