// Precompiled header: the LibTorch headers that nearly every translation unit of the model,
// io and (later) training code needs. Only used through CMake's target_precompile_headers.
#pragma once
#include <torch/torch.h>
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>
#include <string>
#include <vector>
#include <map>
#include <memory>
