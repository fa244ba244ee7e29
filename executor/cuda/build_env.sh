# Sourced by gpu_test.sh and calibrate_run.sh (from the repository root).
# Build dependencies carried as Debian packages in .debs/ (for machines with no package
# registry): unpacked into a private prefix, never into /; Catch2 v2 is the tests' version.
if [ -d .debs ] && [ ! -f /usr/include/catch2/catch.hpp ]; then
  P=/tmp/loom-deps
  mkdir -p $P
  for f in .debs/*.deb; do dpkg -x "$f" $P; done
  export CMAKE_PREFIX_PATH=$P/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  export CPATH=$P/usr/include${CPATH:+:$CPATH}
  export LD_LIBRARY_PATH=$P/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
