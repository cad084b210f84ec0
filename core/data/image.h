// Image files for image_folder datasets: PNG (libpng) and JPEG (libjpeg-turbo) decoded to 8-bit
// grey or RGB, and a bilinear resize (half-pixel centres, as torchvision's Resize without
// antialiasing). A file that is not a readable image is an IoError naming it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cohort::core::data {

struct Image {
  int64_t height = 0, width = 0, channels = 0;  // channels 1 or 3
  std::vector<uint8_t> pixels;                  // height x width x channels, row-major
};

// Decodes a PNG or JPEG (chosen by the file's first bytes, not its name) to `channels` (1: grey,
// 3: RGB). Images larger than 2^28 pixels are refused.
Image read_image(const std::string& path, int channels);

// Resizes to height x width into `out` (height * width * channels floats, channel-first [C, H,
// W], values 0..255).
void resize_bilinear_chw(const Image& in, int64_t height, int64_t width, float* out);

}  // namespace cohort::core::data
