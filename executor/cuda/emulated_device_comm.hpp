// `loom execute --device cuda --emulate-rank r`: rank r of a plan far larger than the machine,
// alone on one GPU. As make_emulated_comm (executor/comm.hpp) does in host memory, every
// collective and pipeline transfer becomes a device copy of the bytes this rank would send (each
// ring chunk copied through a device staging buffer, so the memory traffic is the same size),
// counted as the ring counts them; the data is left as it was (a partial sum stands in for the
// sum). recv copies the last message sent of the same size, or zeros. The copies are timed apart
// (copy_s), so the report's compute is the rank's own.
#pragma once
#include <cuda_runtime.h>

#include <memory>

#include "executor/comm.hpp"

namespace loom::exec {

class EmulatedDeviceComm : public Comm {
 public:
  virtual double copy_s() const = 0;  // wall time in the stand-in copies since the last reset
};

std::unique_ptr<EmulatedDeviceComm> make_emulated_device_comm(int rank, int world, cudaStream_t stream);

}  // namespace loom::exec
