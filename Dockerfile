# syntax=docker/dockerfile:1
# qlora4j on an NVIDIA CUDA runtime (the CUDA driver comes from the host through the NVIDIA
# Container Toolkit; cuBLAS comes with the runtime image; the PTX kernels are inside the jar).
#
#   docker build -t qlora4j .
#   docker run --rm --gpus all qlora4j generate --prompt "In the beginning"     # the embedded model
#   docker run --rm --gpus all -v $PWD/models:/models -v $PWD/runs:/work qlora4j \
#       train --model /models/x --data /work/train.jsonl --output /work/out
#
# Extra JVM options (e.g. -Xmx): docker run -e JAVA_TOOL_OPTIONS=-Xmx64g ...

# ---- build: the shaded jar target/qlora4j.jar (pom.xml's finalName) ----
FROM maven:3.9-eclipse-temurin-25 AS build
WORKDIR /src
COPY .mvn/ .mvn/
COPY mvnw pom.xml ./
COPY kernels-ptx/ kernels-ptx/
COPY src/ src/
RUN --mount=type=cache,target=/root/.m2 chmod +x mvnw && ./mvnw -B -ntp -DskipTests package

# ---- runtime: CUDA 13 runtime (libcublas.so.13) + the Java 25 runtime from the Temurin image ----
# CUDA 13 because the committed PTX is ISA 9.0 (nvcc 13.0): the host driver must be R580 or newer.
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04
# Java2D needs fontconfig and a font to draw loss_curve.png during training, even headless.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fontconfig fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
COPY --from=eclipse-temurin:25-jre /opt/java/openjdk /opt/java/openjdk
# DJL_CACHE_DIR: where the tokenizer's native library is unpacked; /tmp is writable for any --user.
# QLORA4J_KERNEL_CACHE: the GPU kernels compiled for this card (~10 s on first use); mount a volume there
# (-v qlora4j-kernels:/var/cache/qlora4j) so that only the first container pays the compilation.
ENV JAVA_HOME=/opt/java/openjdk \
    PATH=/opt/java/openjdk/bin:$PATH \
    LANG=C.UTF-8 \
    DJL_CACHE_DIR=/tmp/djl.ai \
    QLORA4J_KERNEL_CACHE=/var/cache/qlora4j/kernels \
    QLORA4J_DEFAULT_MODEL=/opt/qlora4j/models/default
COPY --from=build /src/target/qlora4j.jar /opt/qlora4j/qlora4j.jar
COPY models/default/ /opt/qlora4j/models/default/
RUN mkdir -p /var/cache/qlora4j/kernels && chmod 1777 /var/cache/qlora4j/kernels
WORKDIR /work
# The JVM flags are the ./qlora4j launcher's (DockerfileTest keeps them equal).
ENTRYPOINT ["java", "--enable-native-access=ALL-UNNAMED", "--add-modules", "jdk.incubator.vector", "-XX:+UseParallelGC", "-jar", "/opt/qlora4j/qlora4j.jar"]
CMD ["--help"]
