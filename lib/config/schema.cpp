#include "config/schema.h"

#include <filesystem>

namespace lf::schema {

YAML::Node load_yaml_file(const std::string& path) {
  if (!std::filesystem::exists(path)) throw InputError(path + ": no such file");
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw InputError(path + ":" + std::to_string(e.mark.line + 1) + ": YAML syntax error: " + e.msg);
  }
  if (root.IsNull()) return YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw InputError(path + ": the top level must be a mapping of keys");
  return root;
}

namespace {

bool parse_index(const std::string& text, size_t& index) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) return false;
  // Digits past what an index can be (std::stoul threw out_of_range on them: exit 1) saturate, so
  // the caller's "past the end of a list" error names the key.
  index = 0;
  for (char c : text) index = index > 100000000 ? index : index * 10 + static_cast<size_t>(c - '0');
  return true;
}

}  // namespace

void apply_overrides(YAML::Node& root, const std::vector<std::string>& overrides, Source& source) {
  for (const std::string& text : overrides) {
    const size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0)
      throw InputError("override '" + text + "': expected key.path=value", "e.g. train.lr=2e-5 or teachers.0.path=DIR");
    const std::string path = text.substr(0, eq);
    YAML::Node value;
    try {
      value = YAML::Load(text.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw InputError("override '" + text + "': value is not valid YAML: " + e.msg);
    }
    const std::vector<std::string> keys = split(path, '.');
    YAML::Node node = root;
    for (size_t i = 0; i < keys.size(); ++i) {
      const std::string& key = keys[i];
      const bool last = i + 1 == keys.size();
      const std::string so_far = join({keys.begin(), keys.begin() + i + 1}, ".");
      if (key.empty()) throw InputError("override '" + text + "': empty key in '" + path + "'");
      if (node.IsSequence()) {
        size_t index = 0;
        if (!parse_index(key, index))
          throw InputError("override '" + text + "': '" + so_far + "' indexes a list; use a number");
        if (index > node.size())
          throw InputError("override '" + text + "': '" + so_far + "' is past the end of a list of " +
                           std::to_string(node.size()));
        if (index == node.size()) node.push_back(YAML::Node(YAML::NodeType::Map));
        if (last) {
          node[index] = value;
        } else {
          YAML::Node child = node[index];
          node.reset(child);  // rebind; operator= would overwrite the parent's content
        }
        continue;
      }
      if (!node.IsMap() && !node.IsNull())
        throw InputError("override '" + text + "': '" + join({keys.begin(), keys.begin() + i}, ".") +
                         "' is a value, not a mapping");
      if (last) {
        node[key] = value;
      } else {
        if (!node[key] || node[key].IsNull()) node[key] = YAML::Node(YAML::NodeType::Map);
        YAML::Node child = node[key];
        node.reset(child);
      }
    }
    source.overrides[path] = text;
  }
}

YAML::Node node_at_path(const YAML::Node& root, const std::string& path) {
  YAML::Node node = root;
  for (const auto& key : split(path, '.')) {
    if (node.IsSequence() && key.find_first_not_of("0123456789") == std::string::npos && std::stoul(key) < node.size()) {
      node.reset(node[std::stoul(key)]);
    } else if (node.IsMap() && node[key]) {
      YAML::Node child = node[key];
      node.reset(child);
    } else {
      break;
    }
  }
  return node;
}

}  // namespace lf::schema
