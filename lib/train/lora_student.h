// A student trained through LoRA adapters (recipe student.lora / student.adapter; model/lora.h): its
// base frozen in student.dtype, adapters and their optimizer state in float32, checkpoints and final/
// as PEFT adapter directories.
#pragma once

#include "config/recipe.h"
#include "dist/communicator.h"
#include "model/lora.h"
#include "train/checkpoint.h"
#include "train/participants.h"

namespace lf {

// The recipe's student.lora as the model module's config; without it, student.adapter's own
// (adapter_config.json, its targets the modules its weights adapt).
LoraConfig student_lora_config(const Recipe& recipe);

// Adds the adapters to a loaded student: fresh ones from run.seed, or student.adapter's weights.
// Freezes the base. Logs the trainable share.
void attach_student_adapters(Participant& student, const Recipe& recipe);

// How checkpoints and final/ save and load a LoRA student: the adapters as a PEFT directory (rank 0
// writes, float32); loading a directory without adapter_config.json (the student's base, which the
// resume reads to undo a partial load) puts the adapters back to where the run started.
StudentWeights lora_student_weights(Participant& student, const Recipe& recipe, Communicator& comm);

}  // namespace lf
