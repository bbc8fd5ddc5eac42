// Makes svs_kernels._C importable; importing it runs the static TORCH_LIBRARY registrations.
// Only the setup.py build compiles this file; the CMake library is loaded with
// torch.ops.load_library and needs no Python module.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
