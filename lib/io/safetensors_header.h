// The parsing half of safetensors reading, without LibTorch: the 8-byte size, the JSON header and
// every check on it, into plain structs; and `model.safetensors.index.json`. io/safetensors.h builds
// tensors on top of these. Kept free of ATen types so that the fuzz targets (fuzz/) link only this.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lf {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // as spelled in the file: "F32", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
};

// A validated header: every entry's dtype is known, its shape matches its byte count, and its
// offsets lie inside the data section and overlap no other entry's.
struct SafetensorsHeader {
  uint64_t data_start = 0;  // 8 + header size: where the data section begins in the file
  std::vector<SafetensorsEntry> entries;
  std::map<std::string, size_t> index;  // name -> index into entries
  std::map<std::string, std::string> metadata;
};

// Parses the `size` bytes of a whole safetensors file at `data`. Throws InputError
// "PATH: malformed safetensors file: ..." for every malformed case: truncated file, header too
// large, bad JSON, unknown dtype, shape not matching the byte count, offsets out of range or
// overlapping.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, uint64_t size, const std::string& path);

// Bytes per element of a safetensors dtype name ("F32" -> 4); throws InputError for names it does not know.
size_t safetensors_dtype_size(const std::string& name);
bool safetensors_dtype_known(const std::string& name);

// `model.safetensors.index.json`: tensor name -> shard file, and the shard files in order of first
// appearance. `index_path` names the file in errors.
struct SafetensorsIndex {
  std::map<std::string, std::string> weight_map;
  std::vector<std::string> files;
};
SafetensorsIndex parse_safetensors_index(const std::string& text, const std::string& index_path);
// A shard name must be a file in the index's folder (no '/', not ".."): InputError otherwise.
void check_safetensors_shard_name(const std::string& file, const std::string& index_path);

}  // namespace lf
