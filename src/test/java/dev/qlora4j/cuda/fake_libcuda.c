// A fake libcuda.so.1 for checking qlora4j's driver bindings without a GPU (FakeLibcudaPlumbingTest compiles it
// with cc when one is installed). "Device" memory is host memory; the five kernels of native/cast.cu are
// emulated on the CPU, reading their arguments through kernelParams exactly as the driver does; stream
// capture records launches (copying argument values) and graphs replay them. Also usable by hand:
//   cc -O2 -shared -fPIC -o /tmp/fake/libcuda.so.1 fake_libcuda.c; LD_LIBRARY_PATH=/tmp/fake mvn test -Dgroups=gpu ...
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <math.h>
typedef int CUresult;
typedef struct { char name[64]; } Fn;
typedef struct { Fn* f; unsigned gx, bx; uint64_t slots[3]; } Launch;
typedef struct { int capturing; Launch rec[16]; int n; } Stream;
typedef struct { Launch rec[16]; int n; } Graph;
CUresult cuInit(unsigned f){return 0;}
CUresult cuDriverGetVersion(int*v){*v=13000;return 0;}
CUresult cuGetErrorName(CUresult r,const char**s){switch(r){case 2:*s="CUDA_ERROR_OUT_OF_MEMORY";return 0;case 218:*s="CUDA_ERROR_INVALID_PTX";return 0;case 500:*s="CUDA_ERROR_NOT_FOUND";return 0;default:*s=0;return 1;}}
CUresult cuGetErrorString(CUresult r,const char**s){return cuGetErrorName(r,s);}
CUresult cuDeviceGetCount(int*n){*n=1;return 0;}
CUresult cuDeviceGet(int*d,int o){if(o!=0)return 101;*d=0;return 0;}
CUresult cuDeviceGetName(char*n,int len,int d){snprintf(n,len,"NVIDIA Fake");return 0;}
CUresult cuDeviceTotalMem_v2(size_t*b,int d){*b=80ull<<30;return 0;}
CUresult cuDeviceGetAttribute(int*v,int a,int d){switch(a){case 1:*v=1024;break;case 16:*v=132;break;case 38:*v=50<<20;break;case 75:*v=9;break;case 76:*v=0;break;case 97:*v=227*1024;break;default:*v=0;}return 0;}
static long long ctx=0;
CUresult cuDevicePrimaryCtxRetain(long long*c,int d){*c=0x1234;return 0;}
CUresult cuDevicePrimaryCtxRelease_v2(int d){return 0;}
CUresult cuCtxSetCurrent(long long c){ctx=c;return 0;}
CUresult cuCtxGetCurrent(long long*c){*c=ctx;return 0;}
CUresult cuCtxGetDevice(int*d){*d=0;return 0;}
CUresult cuCtxSynchronize(void){return 0;}
CUresult cuStreamCreateWithPriority(Stream**s,unsigned f,int p){*s=calloc(1,sizeof(Stream));return 0;}
CUresult cuCtxGetStreamPriorityRange(int*least,int*greatest){*least=0;*greatest=-5;return 0;}
CUresult cuStreamDestroy_v2(Stream*s){free(s);return 0;}
CUresult cuStreamSynchronize(Stream*s){return 0;}
CUresult cuEventCreate(void**e,unsigned f){*e=malloc(8);return 0;}
CUresult cuEventRecord(void*e,void*s){return 0;}
CUresult cuEventSynchronize(void*e){return 0;}
CUresult cuEventElapsedTime_v2(float*ms,void*a,void*b){*ms=1.5f;return 0;}
CUresult cuEventDestroy_v2(void*e){free(e);return 0;}
static size_t used=0;
CUresult cuMemAlloc_v2(uint64_t*p,size_t b){if(b>(1ull<<40))return 2;void*m=malloc(b);if(!m)return 2;*p=(uint64_t)m;used+=b;return 0;}
CUresult cuMemFree_v2(uint64_t p){free((void*)p);return 0;}
CUresult cuMemAllocHost_v2(void**p,size_t b){*p=malloc(b);return 0;}
CUresult cuMemFreeHost(void*p){free(p);return 0;}
CUresult cuMemGetInfo_v2(size_t*f,size_t*t){*t=80ull<<30;*f=*t-used-(1<<30);return 0;}
CUresult cuMemcpyHtoD_v2(uint64_t d,const void*s,size_t n){memcpy((void*)d,s,n);return 0;}
CUresult cuMemcpyDtoH_v2(void*d,uint64_t s,size_t n){memcpy(d,(void*)s,n);return 0;}
CUresult cuMemcpyDtoD_v2(uint64_t d,uint64_t s,size_t n){memcpy((void*)d,(void*)s,n);return 0;}
CUresult cuMemcpyHtoDAsync_v2(uint64_t d,const void*s,size_t n,void*st){return cuMemcpyHtoD_v2(d,s,n);}
CUresult cuMemcpyDtoHAsync_v2(void*d,uint64_t s,size_t n,void*st){return cuMemcpyDtoH_v2(d,s,n);}
CUresult cuMemcpyDtoDAsync_v2(uint64_t d,uint64_t s,size_t n,void*st){return cuMemcpyDtoD_v2(d,s,n);}
CUresult cuMemsetD8_v2(uint64_t d,unsigned char v,size_t n){memset((void*)d,v,n);return 0;}
CUresult cuMemsetD32_v2(uint64_t d,unsigned v,size_t n){for(size_t i=0;i<n;i++)((unsigned*)d)[i]=v;return 0;}
CUresult cuMemsetD8Async(uint64_t d,unsigned char v,size_t n,void*s){return cuMemsetD8_v2(d,v,n);}
CUresult cuMemsetD32Async(uint64_t d,unsigned v,size_t n,void*s){return cuMemsetD32_v2(d,v,n);}
CUresult cuModuleLoadDataEx(void**m,const void*img,unsigned n,int*opts,void**vals){
  const char*s=img; if(strstr(s,"this_is_not_an_instruction")){for(unsigned i=0;i<n;i++)if(opts[i]==5)strcpy((char*)vals[i],"ptxas application ptx input, line 6; error   : Not a name of any known instruction");return 218;}
  if(!strstr(s,".entry")) return 218; *m=(void*)0x777;return 0;}
CUresult cuModuleUnload(void*m){return 0;}
// The link API: the "cubin" is the PTX text itself (which the fake cuModuleLoadDataEx accepts); the error log
// buffer given to cuLinkCreate receives the same message as cuModuleLoadDataEx's.
typedef struct { char* data; size_t n; char* log; } Link;
CUresult cuLinkCreate_v2(unsigned n,int*opts,void**vals,void**st){Link*l=calloc(1,sizeof(Link));
  for(unsigned i=0;i<n;i++) if(opts[i]==5) l->log=(char*)vals[i]; *st=l; return 0;}
CUresult cuLinkAddData_v2(void*st,int type,void*data,size_t size,const char*name,unsigned n,int*o,void**v){Link*l=st;
  if(type!=1) return 1; if(strstr((const char*)data,"this_is_not_an_instruction")){if(l->log)strcpy(l->log,"ptxas application ptx input, line 6; error   : Not a name of any known instruction");return 218;}
  l->data=malloc(size); memcpy(l->data,data,size); l->n=size; return 0;}
CUresult cuLinkComplete(void*st,void**cubin,size_t*size){Link*l=st; *cubin=l->data; *size=l->n; return 0;}
CUresult cuLinkDestroy(void*st){Link*l=st; free(l->data); free(l); return 0;}
CUresult cuModuleGetFunction(Fn**f,void*m,const char*name){
  const char* known[]={"cast_f32_to_bf16","cast_bf16_to_f32","cast_f32_to_f16","cast_f16_to_f32","fill_f32"};
  for(int i=0;i<5;i++) if(!strcmp(name,known[i])){*f=calloc(1,sizeof(Fn));strcpy((*f)->name,name);return 0;}
  return 500;}
CUresult cuFuncSetAttribute(void*f,int a,int v){return 0;}
static uint16_t f2bf(float x){uint32_t u;memcpy(&u,&x,4);if((u&0x7fffffff)>0x7f800000)return (u>>16)|0x40;u+=0x7fff+((u>>16)&1);return u>>16;}
static void run(Launch*l){
  const char*n=l->f->name; int64_t cnt=(int64_t)l->slots[2]; long threads=(long)l->gx*l->bx;
  for(long t=0;t<threads;t++) for(int64_t i=t;i<cnt;i+=threads){
    if(!strcmp(n,"fill_f32")){float v;memcpy(&v,&l->slots[1],4);((float*)l->slots[0])[i]=v;}
    else if(!strcmp(n,"cast_f32_to_bf16"))((uint16_t*)l->slots[1])[i]=f2bf(((float*)l->slots[0])[i]);
    else if(!strcmp(n,"cast_bf16_to_f32")){uint32_t u=((uint32_t)((uint16_t*)l->slots[0])[i])<<16;memcpy(&((float*)l->slots[1])[i],&u,4);}
    else if(!strcmp(n,"cast_f32_to_f16")){_Float16 h=(_Float16)((float*)l->slots[0])[i];memcpy(&((uint16_t*)l->slots[1])[i],&h,2);}
    else if(!strcmp(n,"cast_f16_to_f32")){_Float16 h;memcpy(&h,&((uint16_t*)l->slots[0])[i],2);((float*)l->slots[1])[i]=(float)h;}
  }}
CUresult cuLaunchKernel(Fn*f,unsigned gx,unsigned gy,unsigned gz,unsigned bx,unsigned by,unsigned bz,unsigned sh,Stream*s,void**p,void**extra){
  Launch l={f,gx,bx,{0,0,0}}; for(int i=0;i<3;i++) memcpy(&l.slots[i],p[i],i==1&&!strcmp(f->name,"fill_f32")?4:8);
  if(s&&s->capturing){s->rec[s->n++]=l;return 0;} run(&l);return 0;}
// cuLaunchKernelEx: the CUlaunchConfig / CUlaunchAttribute of cuda.h (CUDA 12+); anything but exactly one
// PROGRAMMATIC_STREAM_SERIALIZATION (id 6) attribute with the value 1 is refused (CUDA_ERROR_INVALID_VALUE).
typedef struct { int id; char pad[4]; union { char pad[64]; int programmatic; } value; } LaunchAttr;
typedef struct { unsigned gx,gy,gz,bx,by,bz,sh; Stream* s; LaunchAttr* attrs; unsigned num; } LaunchCfg;
static int programmatic_launches=0;
CUresult cuLaunchKernelEx(const LaunchCfg*c,Fn*f,void**p,void**extra){
  if(sizeof(LaunchCfg)!=56||sizeof(LaunchAttr)!=72) return 1;
  if(c->num!=1||!c->attrs||c->attrs[0].id!=6||c->attrs[0].value.programmatic!=1) return 1;
  programmatic_launches++;
  return cuLaunchKernel(f,c->gx,c->gy,c->gz,c->bx,c->by,c->bz,c->sh,c->s,p,extra);}
int fake_programmatic_launches(void){return programmatic_launches;}
CUresult cuStreamBeginCapture_v2(Stream*s,int mode){if(!s)return 900;s->capturing=1;s->n=0;return 0;}
CUresult cuStreamEndCapture(Stream*s,Graph**g){*g=calloc(1,sizeof(Graph));memcpy((*g)->rec,s->rec,sizeof s->rec);(*g)->n=s->n;s->capturing=0;return 0;}
CUresult cuGraphInstantiateWithFlags(Graph**e,Graph*g,unsigned long long fl){*e=malloc(sizeof(Graph));memcpy(*e,g,sizeof(Graph));return 0;}
CUresult cuGraphLaunch(Graph*e,void*s){for(int i=0;i<e->n;i++)run(&e->rec[i]);return 0;}
CUresult cuGraphExecDestroy(Graph*e){free(e);return 0;}
CUresult cuGraphDestroy(Graph*g){free(g);return 0;}
CUresult cuEventElapsedTime(float*ms,void*a,void*b){*ms=1.5f;return 0;}
