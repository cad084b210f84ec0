// Writers of the files users bring (.npy arrays, CSV tables, PNG and JPEG images), for the tests
// of npy, csv and image_folder datasets. Independent of Cohort's readers: the formats as NumPy,
// libpng and libjpeg define them.
#pragma once

#include <png.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <jpeglib.h>

namespace cohort::test {

// A .npy file (format 1.0) of `data` with NumPy dtype string `descr` ('<f4', '|u1', ...).
inline void write_npy(const std::string& path, const std::string& descr,
                      const std::vector<int64_t>& shape, const void* data, size_t bytes,
                      const std::string& fortran = "False") {
  std::string dims;  // NumPy's tuple: "(3,)", "(3, 4)"
  for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dims += ",";
  std::string dict =
      "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': (" + dims + "), }";
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(dict.size());
  f.put(static_cast<char>(len & 0xff));
  f.put(static_cast<char>(len >> 8));
  f << dict;
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

// An 8-bit PNG (channels 1 or 3) through libpng's simplified API.
inline bool write_png(const std::string& path, int width, int height, int channels,
                      const std::vector<uint8_t>& pixels) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  img.width = static_cast<png_uint_32>(width);
  img.height = static_cast<png_uint_32>(height);
  img.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  return png_image_write_to_file(&img, path.c_str(), 0, pixels.data(), 0, nullptr) != 0;
}

// A baseline JPEG (channels 1 or 3), quality 95.
inline void write_jpeg(const std::string& path, int width, int height, int channels,
                       const std::vector<uint8_t>& pixels) {
  jpeg_compress_struct c;
  jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  FILE* f = std::fopen(path.c_str(), "wb");
  jpeg_stdio_dest(&c, f);
  c.image_width = static_cast<JDIMENSION>(width);
  c.image_height = static_cast<JDIMENSION>(height);
  c.input_components = channels;
  c.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, 95, TRUE);
  jpeg_start_compress(&c, TRUE);
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(pixels.data()) + c.next_scanline * width * channels;
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  std::fclose(f);
}

}  // namespace cohort::test
