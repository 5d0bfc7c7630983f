TFLiteMeta = load_tflite = None
