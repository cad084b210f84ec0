# Debian packages (`cpack -G DEB` in the build directory, or scripts/package.sh): one per
# install component, so that a CPU node or a login node installs `cohort` alone and needs neither
# CUDA nor Open MPI, and a GPU node adds cohort-cuda.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME cohort)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "Cohort")
set(CPACK_PACKAGE_CONTACT "Cohort developers <cohort@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "distributed training without Python")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # cohort_0.1.0_amd64.deb
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_COMPONENTS_ALL runtime dev)
set(_cohort_exact "cohort (= ${PROJECT_VERSION})")

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME cohort)
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION
    "the cohort program and libraries: training, cohort launch, CPU collectives, parameter servers")
# dpkg-shlibdeps finds the Debian packages of the libraries the program links; the BLAS is opened
# at run time, so it is named here.
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_DEPENDS "libopenblas0")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${CMAKE_BINARY_DIR}/lib)

set(CPACK_DEBIAN_DEV_PACKAGE_NAME cohort-dev)
set(CPACK_COMPONENT_DEV_DESCRIPTION "headers, static libraries and the CMake package of cohort")
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
    "${_cohort_exact}, libyaml-cpp-dev, zlib1g-dev, libpng-dev, libjpeg62-turbo-dev, nlohmann-json3-dev, libssl-dev, libboost-dev")
if(COHORT_USE_GRPC)
  string(APPEND CPACK_DEBIAN_DEV_PACKAGE_DEPENDS ", libgrpc++-dev, libprotobuf-dev")
endif()

if(COHORT_USE_MPI)
  list(APPEND CPACK_COMPONENTS_ALL mpi)
  set(CPACK_DEBIAN_MPI_PACKAGE_NAME cohort-mpi)
  set(CPACK_COMPONENT_MPI_DESCRIPTION "cohort's mpi backend (libcohort_mpi.so), for jobs under mpirun")
  set(CPACK_DEBIAN_MPI_PACKAGE_DEPENDS "${_cohort_exact}, libopenmpi3")
endif()

if(COHORT_USE_CUDA)
  list(APPEND CPACK_COMPONENTS_ALL cuda)
  set(CPACK_DEBIAN_CUDA_PACKAGE_NAME cohort-cuda)
  set(CPACK_COMPONENT_CUDA_DESCRIPTION
      "cohort's CUDA module (kernels, cuBLAS, cuDNN) and nccl backend, for GPU nodes")
  # NVIDIA's libraries come from NVIDIA's repository or the CUDA installer, not from Debian: the
  # package recommends NVIDIA's package names, and `cohort env` says what a node lacks.
  set(CPACK_DEBIAN_CUDA_PACKAGE_DEPENDS "${_cohort_exact}")
  set(CPACK_DEBIAN_CUDA_PACKAGE_RECOMMENDS
      "cuda-cudart-${CUDAToolkit_VERSION_MAJOR}-${CUDAToolkit_VERSION_MINOR}, libcublas-${CUDAToolkit_VERSION_MAJOR}-${CUDAToolkit_VERSION_MINOR}, libcudnn9-cuda-${CUDAToolkit_VERSION_MAJOR}, libnccl2")
endif()
include(CPack)
