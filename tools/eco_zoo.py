#!/usr/bin/env python
"""The ecosystem zoo sweep (`make zoo-eco`): fold real models of the libraries people train with beyond timm and torchvision.

    python tools/eco_zoo.py [--lib LIB ...] [--models PATTERN ...] [--quick] [--jobs 2] [--timeout 300] [--memory 8] [--out bench/]
    python tools/eco_zoo.py --list [--lib LIB]   # the model ids, without running anything
    python tools/eco_zoo.py --render             # rewrite DIR/eco_zoo.md from DIR/eco_zoo.jsonl
    python tools/eco_zoo.py --update --models 'hf/detr*'   # run these again and replace their lines in the full sweep's files

What runs: about 140 models of Hugging Face transformers (every model type whose modelling code has a BatchNorm or a frozen
BatchNorm, with small configs), segmentation_models_pytorch (each architecture with a few encoders), MONAI (3-D networks
with batch norm), speechbrain (1-D speech models), ultralytics (YOLO detect/segment/pose/classify/obb and RT-DETR from the
yaml files it ships) and fastai (unet, vision and tabular learners' models). Each is built from its config with random
weights, nothing downloaded; `randomize_bn` then gives every BatchNorm trained-looking statistics (and the BatchNorm-like
modules fasterbn does not know, such as transformers' `DetrFrozenBatchNorm2d`, get the same treatment here). A library that
is not installed is skipped (install them with `pip install -e ".[eco]"`, or let `make zoo-eco` do it).

Per model, in its own forked process (one torch thread, a time limit and an address-space cap):
1. BatchNorms: every module that holds `running_mean` and `running_var` tensors, whatever its class, counted once even when
   registered under several names; `missing`: how many of them have no row in `folder.report`.
2. float32: `BN_Folder().fold(model, example_inputs=x)` with the model's own declared input at batch 2 -> folded / total,
   fold time, the kind and surroundings of each BatchNorm not folded; then `BN_Folder().fold(model)` without inputs.
3. float32: torch.fx `fuse` (BatchNorms the graph no longer references; untraceable -> 0 and the error), and the library's
   own fuser where it has one (ultralytics `model.fuse()`: BatchNorms left afterwards).
4. float64, once with and once without example inputs: the model is rebuilt with the same seeds, `.double()`, its reference
   outputs computed on (a) the example and (b) another input the unfolded model accepts (batch 3 and a larger spatial or
   sequence size, or the same size where the model is fixed to it), folded in place, and run on both. Error = max over output
   tensors of max|folded - ref| / max|ref|; exact when <= 1e-9. A folded model that raises an error from fasterbn's code on
   (b) is "guarded" (the error's first line is recorded), not inexact; any other failure on (b) counts as inexact. Where a
   fold is inexact, the model's own float64 noise floor is measured as tools/zoo.py does (every weight moved by about one
   rounding error).
Status: ok, crash (fasterbn raised: stage and exception), error (the unfolded model could not be built or run here),
timeout, oom, died (the worker ended without a result), no-bn, skipped (its library is not installed).

Outputs: DIR/eco_zoo.jsonl (a `run` line, then one line per model) and DIR/eco_zoo.md. Runs of a subset (--lib, --models,
--quick, --limit) write DIR/eco_zoo-partial.* instead, so trying the tool never overwrites the committed sweep.
"""
import os, tempfile
# No network, no telemetry, no update checks, and no writes to the home folder: set before any library is imported.
os.environ.update(YOLO_OFFLINE='1', HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', HF_HUB_DISABLE_TELEMETRY='1',
                  TOKENIZERS_PARALLELISM='false', YOLO_VERBOSE='false', MPLBACKEND='Agg')
os.environ.setdefault('YOLO_CONFIG_DIR', os.path.join(tempfile.gettempdir(), 'fasterbn-eco-zoo-yolo'))
import argparse, copy, datetime, fnmatch, importlib, importlib.util, json, math, platform, re, sys, time, traceback, warnings
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'tools'))
import torch, torch.nn as nn
torch.set_num_threads(1)   # before any work: every forked worker inherits one intra-op thread
import fasterbn
from fasterbn import BN_Folder, randomize_bn
from zoo_lib import (TOL, SEED, shape_of, rel_error, first_line, fx_fuse, perturbed, is_oom, row_kind, pattern, run_pool,
                     pct, clip, fmt_err, md)

warnings.filterwarnings('ignore')
LIBS = {'transformers': 'transformers', 'smp': 'segmentation_models_pytorch', 'monai': 'monai', 'speechbrain': 'speechbrain',
        'ultralytics': 'ultralytics', 'fastai': 'fastai'}   # short name -> import name
QUICK = ['hf/mobilenet_v2', 'hf/detr', 'smp/Unet-efficientnet-b0', 'monai/DynUNet', 'sb/Xvector', 'yolo/yolov8n',
         'fastai/unet-resnet18', 'fastai/tabular']
FASTERBN_DIR = str(Path(fasterbn.__file__).resolve().parent)

def holds_stats(m: nn.Module) -> bool:
    "A BatchNorm for this sweep: any module holding `running_mean` and `running_var` tensors, whatever its class."
    return isinstance(getattr(m, 'running_mean', None), torch.Tensor) and isinstance(getattr(m, 'running_var', None), torch.Tensor)

# ---------------------------------------------------------------- the models
# A spec: id, lib, how to build (per library), and `inputs`: (kind, *sizes) read by `make_inputs`.

def _hf(name, cls, inputs, **config):
    return {'id': f'hf/{name}', 'lib': 'transformers', 'cls': cls, 'config': config, 'inputs': inputs}

_R18 = dict(backbone='resnet18')   # DETR-style configs: a timm resnet18 backbone (random weights), frozen BatchNorms as released
_TINY_DETR = dict(d_model=64, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
                  encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10)
_HF_RESNET = dict(model_type='resnet', embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type='basic')
_IMG = ('image', 3, 64)
_DET = ('image', 3, 128)

HF = [
    _hf('mobilenet_v1', 'MobileNetV1ForImageClassification', _IMG, depth_multiplier=0.25, image_size=64),
    _hf('mobilenet_v1-no-tf-padding', 'MobileNetV1ForImageClassification', _IMG, depth_multiplier=0.25, image_size=64, tf_padding=False),
    _hf('mobilenet_v2', 'MobileNetV2ForImageClassification', _IMG, depth_multiplier=0.35, image_size=64),
    _hf('mobilenet_v2-no-tf-padding', 'MobileNetV2ForImageClassification', _IMG, depth_multiplier=0.35, image_size=64, tf_padding=False),
    _hf('mobilenet_v2-deeplabv3', 'MobileNetV2ForSemanticSegmentation', _IMG, depth_multiplier=0.35, image_size=64),
    _hf('efficientnet', 'EfficientNetForImageClassification', _IMG, width_coefficient=0.5, depth_coefficient=0.5, image_size=64, hidden_dim=640),
    _hf('resnet', 'ResNetForImageClassification', _IMG, **{k: v for k, v in _HF_RESNET.items() if k != 'model_type'}),
    _hf('regnet', 'RegNetForImageClassification', _IMG, embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1],
        groups_width=8, layer_type='y'),
    _hf('mobilevit', 'MobileViTForImageClassification', _IMG, image_size=64, hidden_sizes=[64, 80, 96],
        neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0),
    _hf('mobilevit-deeplabv3', 'MobileViTForSemanticSegmentation', _IMG, image_size=64, hidden_sizes=[64, 80, 96],
        neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0, aspp_out_channels=64),
    _hf('mobilevitv2', 'MobileViTV2ForImageClassification', _IMG, image_size=64, width_multiplier=0.5),
    _hf('levit', 'LevitForImageClassification', ('image', 3, 64, 0), image_size=64, hidden_sizes=[32, 48, 64],
        num_attention_heads=[2, 3, 4], depths=[1, 1, 1], key_dim=[16, 16, 16]),
    _hf('swiftformer', 'SwiftFormerForImageClassification', _IMG, depths=[1, 1, 1, 1], embed_dims=[16, 32, 48, 64]),
    _hf('cvt', 'CvtForImageClassification', _IMG, embed_dim=[16, 32, 48], num_heads=[1, 1, 2]),
    _hf('textnet', 'TextNetForImageClassification', _IMG),
    _hf('hgnet_v2', 'HGNetV2ForImageClassification', _IMG),
    _hf('pp_lcnet', 'PPLCNetForImageClassification', _IMG),
    _hf('pp_lcnet_v3', 'PPLCNetV3Backbone', _IMG),
    _hf('pp_lcnet_v4', 'PPLCNetV4Backbone', _IMG),
    _hf('align_vision', 'AlignVisionModel', _IMG, width_coefficient=0.5, depth_coefficient=0.5, image_size=64, hidden_dim=320),
    _hf('segformer', 'SegformerForSemanticSegmentation', _IMG),
    _hf('glpn', 'GLPNForDepthEstimation', _IMG),
    _hf('dpt', 'DPTForSemanticSegmentation', ('image', 3, 64, 0), image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=4,
        num_attention_heads=2, intermediate_size=128, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 64, 64],
        fusion_hidden_size=32),
    _hf('dpt-hybrid', 'DPTForDepthEstimation', ('image', 3, 64, 0), is_hybrid=True, image_size=64, hidden_size=64,
        num_attention_heads=2, intermediate_size=128, neck_hidden_sizes=[256, 512, 64, 64], fusion_hidden_size=32,
        use_batch_norm_in_fusion_residual=True, backbone_featmap_shape=[1, 1024, 4, 4]),
    _hf('upernet', 'UperNetForSemanticSegmentation', _IMG, hidden_size=32, auxiliary_channels=16,
        backbone_config={**_HF_RESNET, 'out_features': ['stage1', 'stage2', 'stage3', 'stage4']}),
    _hf('beit-upernet', 'BeitForSemanticSegmentation', ('image', 3, 64, 0), image_size=64, hidden_size=64, num_hidden_layers=4,
        num_attention_heads=2, intermediate_size=128, out_indices=[1, 2, 3, 4], auxiliary_channels=16),
    _hf('data2vec_vision-upernet', 'Data2VecVisionForSemanticSegmentation', ('image', 3, 64, 0), image_size=64, hidden_size=64,
        num_hidden_layers=4, num_attention_heads=2, intermediate_size=128, out_indices=[1, 2, 3, 4], auxiliary_channels=16),
    _hf('vitmatte', 'VitMatteForImageMatting', ('image', 4, 64), hidden_size=64, convstream_hidden_sizes=[16, 32, 64],
        fusion_hidden_sizes=[64, 32, 16, 8], backbone_config=dict(model_type='vitdet', hidden_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_channels=4, image_size=64, pretrain_image_size=64, out_features=['stage2'])),
    _hf('vitpose', 'VitPoseForPoseEstimation', ('image', 3, 64, 0), use_simple_decoder=False,
        backbone_config=dict(model_type='vitpose_backbone', hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=128, image_size=[64, 64], patch_size=[16, 16], out_indices=[2])),
    _hf('superglue', 'SuperGlueForKeypointMatching', ('pair', 1, 64)),
    _hf('efficientloftr', 'EfficientLoFTRForKeypointMatching', ('pair', 3, 64)),
    _hf('slanet', 'SLANetForTableRecognition', ('image', 3, 128)),
    _hf('pp_ocrv5_mobile_det', 'PPOCRV5MobileDetForObjectDetection', ('image', 3, 64)),
    _hf('pp_ocrv5_server_rec', 'PPOCRV5ServerRecForTextRecognition', ('image', 3, 48, 0)),
    _hf('pp_ocrv6_small_rec', 'PPOCRV6SmallRecForTextRecognition', ('image', 3, 48, 0)),
    _hf('pp_ocrv6_tiny_rec', 'PPOCRV6TinyRecForTextRecognition', ('image', 3, 48, 0)),
    _hf('detr', 'DetrForObjectDetection', _DET, **_R18, **_TINY_DETR),
    _hf('detr-hf-resnet', 'DetrForObjectDetection', _DET, **_TINY_DETR, use_timm_backbone=False,
        backbone_config={**_HF_RESNET, 'out_features': ['stage4']}),
    _hf('detr-panoptic', 'DetrForSegmentation', _DET, **_R18, **{**_TINY_DETR, 'encoder_attention_heads': 8, 'decoder_attention_heads': 8}),
    _hf('conditional_detr', 'ConditionalDetrForObjectDetection', _DET, **_R18, **_TINY_DETR),
    _hf('deformable_detr', 'DeformableDetrForObjectDetection', _DET, **_R18, **_TINY_DETR | {'decoder_layers': 2}, encoder_n_points=2, decoder_n_points=2),
    _hf('table_transformer', 'TableTransformerForObjectDetection', _DET, **_R18, **_TINY_DETR),
    _hf('dab_detr', 'DabDetrForObjectDetection', _DET, **_R18, hidden_size=64, encoder_layers=1, decoder_layers=1,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10),
    _hf('rt_detr', 'RTDetrForObjectDetection', _DET),
    _hf('rt_detr_v2', 'RTDetrV2ForObjectDetection', _DET),
    _hf('d_fine', 'DFineForObjectDetection', _DET),
    _hf('deimv2', 'Deimv2ForObjectDetection', _DET),
    _hf('pp_doclayout_v3', 'PPDocLayoutV3ForObjectDetection', _DET),
    _hf('pp_doclayout_v4', 'PPDocLayoutV4ForObjectDetection', _DET),
    _hf('groupvit', 'GroupViTModel', ('tokens+image', 8, 100, 3, 64), projection_dim=32, projection_intermediate_dim=64,
        text_config=dict(model_type='groupvit_text_model', vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, bos_token_id=1, eos_token_id=2),
        vision_config=dict(model_type='groupvit_vision_model', hidden_size=32, intermediate_size=64, depths=[1, 1, 1],
                           num_hidden_layers=3, num_group_tokens=[8, 4, 0], num_output_groups=[8, 4, 4], num_attention_heads=2,
                           image_size=64, patch_size=16)),
    _hf('perceiver-conv', 'PerceiverForImageClassificationConvProcessing', ('image', 3, 64, 0), d_latents=64, num_latents=32,
        num_blocks=1, num_self_attends_per_block=1, num_self_attention_heads=2, num_cross_attention_heads=1, image_size=64),
    *[_hf(name, cls, ('image+tokens', 3, 128, 6, 100), **_TINY_DETR | {'decoder_layers': 2}, encoder_n_points=2, decoder_n_points=2,
          backbone_config=dict(model_type='timm_backbone', backbone='resnet18', features_only=True, use_pretrained_backbone=False,
                               out_indices=[2, 3, 4]),
          text_config=dict(model_type='bert', hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                           vocab_size=100))
      for name, cls in [('grounding_dino', 'GroundingDinoForObjectDetection'), ('mm_grounding_dino', 'MMGroundingDinoForObjectDetection')]],
    _hf('mask2former', 'Mask2FormerForUniversalSegmentation', _DET, hidden_dim=64, mask_feature_size=64, feature_size=64,
        encoder_layers=1, decoder_layers=2, num_queries=10, encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2,
        backbone_config={**_HF_RESNET, 'out_features': ['stage1', 'stage2', 'stage3', 'stage4']}),
    _hf('maskformer', 'MaskFormerForInstanceSegmentation', _DET, fpn_feature_size=32, mask_feature_size=32, num_queries=10,
        backbone_config={**_HF_RESNET, 'out_features': ['stage1', 'stage2', 'stage3', 'stage4']},
        decoder_config=dict(model_type='detr', d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
                            encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10)),
    _hf('patchtst', 'PatchTSTForPrediction', ('series', 64, 3), num_input_channels=3, context_length=64, patch_length=8,
        patch_stride=8, d_model=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, prediction_length=8),
    _hf('patchtsmixer', 'PatchTSMixerForPrediction', ('series', 64, 3), num_input_channels=3, context_length=64, patch_length=8,
        patch_stride=8, d_model=16, num_layers=2, norm_mlp='BatchNorm', prediction_length=8),
    _hf('clap_audio', 'ClapAudioModel', ('mel', 64, 64, 0), spec_size=64, window_size=4, depths=[1, 1], num_attention_heads=[2, 2],
        patch_embeds_hidden_size=32, hidden_size=64, num_mel_bins=64, enable_fusion=False),
    _hf('wav2vec2_conformer', 'Wav2Vec2ConformerModel', ('audio', 4000, 1600), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        conv_depthwise_kernel_size=7),
    _hf('fastspeech2_conformer', 'FastSpeech2ConformerModel', ('tokens', 8, 50), vocab_size=50, hidden_size=32,
        encoder_layers=1, decoder_layers=1, encoder_linear_units=64, decoder_linear_units=64, encoder_num_attention_heads=2,
        decoder_num_attention_heads=2, speech_decoder_postnet_units=32, duration_predictor_channels=32,
        pitch_predictor_channels=32, energy_predictor_channels=32),
    _hf('parakeet', 'ParakeetEncoder', ('seq', 64, 80), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, subsampling_conv_channels=16, num_mel_bins=80),
    _hf('lasr', 'LasrEncoder', ('seq', 64, 80), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, subsampling_conv_channels=16, num_mel_bins=80),
]

_SMP_ARCHS = ['Unet', 'UnetPlusPlus', 'FPN', 'PSPNet', 'DeepLabV3', 'DeepLabV3Plus', 'Linknet', 'MAnet', 'PAN', 'UPerNet', 'Segformer']
SMP = [{'id': f'smp/{a}-{e}', 'lib': 'smp', 'arch': a, 'encoder': e, 'inputs': ('image', 3, 128 if a == 'PAN' else 64)}
       for e, archs in [('resnet18', _SMP_ARCHS), ('efficientnet-b0', _SMP_ARCHS),
                        ('timm-efficientnet-b0', ['Unet', 'FPN', 'DeepLabV3Plus']), ('mobilenet_v2', ['Unet', 'FPN', 'PSPNet']),
                        ('mit_b0', ['Unet', 'Segformer'])] for a in archs]

def _monai(name, cls, size=32, step=16, **kw):
    return {'id': f'monai/{name}', 'lib': 'monai', 'cls': cls, 'kw': kw, 'inputs': ('volume', 1, size, step)}

MONAI = [
    _monai('DynUNet', 'DynUNet', spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2],
           upsample_kernel_size=[2, 2, 2], norm_name='batch', filters=[8, 16, 32, 64]),
    _monai('DynUNet-deep-supervision', 'DynUNet', spatial_dims=3, in_channels=1, out_channels=2, kernel_size=[3, 3, 3, 3],
           strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2], norm_name='batch', filters=[8, 16, 32, 64], res_block=True),
    _monai('UNet', 'UNet', spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32, 64), strides=(2, 2, 2),
           num_res_units=2, norm='batch'),
    _monai('BasicUNet', 'BasicUNet', spatial_dims=3, in_channels=1, out_channels=2, features=(8, 8, 16, 32, 64, 8), norm='batch'),
    _monai('BasicUNetPlusPlus', 'BasicUNetPlusPlus', spatial_dims=3, in_channels=1, out_channels=2, features=(8, 8, 16, 32, 64, 8),
           norm='batch'),
    _monai('FlexibleUNet', 'FlexibleUNet', in_channels=1, out_channels=2, backbone='efficientnet-b0', pretrained=False,
           spatial_dims=3, decoder_channels=(32, 16, 16, 8, 8), norm='batch'),
    _monai('SegResNet', 'SegResNet', spatial_dims=3, init_filters=8, in_channels=1, out_channels=2, norm='batch'),
    _monai('SegResNetDS', 'SegResNetDS', spatial_dims=3, init_filters=8, in_channels=1, out_channels=2, norm='batch'),
    _monai('DenseNet121', 'DenseNet121', spatial_dims=3, in_channels=1, out_channels=2, init_features=16, growth_rate=8),
    _monai('ResNet10', 'resnet10', spatial_dims=3, n_input_channels=1, num_classes=2),
    _monai('EfficientNetBN-b0', 'EfficientNetBN', model_name='efficientnet-b0', pretrained=False, spatial_dims=3, in_channels=1,
           num_classes=2),
    _monai('AttentionUnet', 'AttentionUnet', spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32, 64), strides=(2, 2, 2)),
    _monai('VNet', 'VNet', size=16, step=16, spatial_dims=3, in_channels=1, out_channels=2),   # 48³ at batch 3 needs 12 GB in float64
    _monai('SEResNet50', 'SEResNet50', spatial_dims=3, in_channels=1, num_classes=2),
    _monai('HighResNet', 'HighResNet', size=16, step=8, spatial_dims=3, in_channels=1, out_channels=2, norm_type='batch'),
    _monai('UNETR', 'UNETR', size=32, step=0, in_channels=1, out_channels=2, img_size=32, feature_size=8, hidden_size=96,
           mlp_dim=192, num_heads=4, norm_name='batch'),
    _monai('SwinUNETR', 'SwinUNETR', in_channels=1, out_channels=2, feature_size=12, norm_name='batch', spatial_dims=3),
    _monai('LocalNet', 'LocalNet', spatial_dims=3, in_channels=1, num_channel_initial=8, extract_levels=(0, 1, 2), out_channels=3),
    _monai('AHNet', 'AHNet', size=32, step=32, spatial_dims=3, in_channels=1, out_channels=2, psp_block_num=2),
]

def _sb(name, module, cls, inputs, **kw): return {'id': f'sb/{name}', 'lib': 'speechbrain', 'module': module, 'cls': cls, 'kw': kw, 'inputs': inputs}

SPEECHBRAIN = [
    _sb('Xvector', 'Xvector', 'Xvector', ('seq', 50, 40), in_channels=40, tdnn_channels=[64, 64, 64, 64, 128], lin_neurons=64),
    _sb('ECAPA_TDNN', 'ECAPA_TDNN', 'ECAPA_TDNN', ('seq', 50, 40), input_size=40, channels=[64, 64, 64, 64, 192], lin_neurons=64,
        attention_channels=32),
    _sb('ResNet', 'ResNet', 'ResNet', ('seq', 50, 40), input_size=40, channels=[16, 16, 32, 32], block_sizes=[1, 1, 1, 1], lin_neurons=32),
    _sb('Cnn14', 'Cnn14', 'Cnn14', ('seq', 128, 64), mel_bins=64, emb_dim=64),
    _sb('CRDNN', 'CRDNN', 'CRDNN', ('seq', 50, 40), input_shape=[None, None, 40], cnn_channels=(16, 32), rnn_neurons=32,
        dnn_neurons=32, rnn_layers=1, dnn_blocks=1, time_pooling=True),
    _sb('ContextNet', 'ContextNet', 'ContextNet', ('seq', 48, 40), input_shape=(None, None, 40), out_channels=64,
        conv_channels=[32, 32, 32], strides=[1, 2, 1], num_blocks=3, num_layers=2, inner_dim=16),
    _sb('EnhanceResnet', 'EnhanceResnet', 'EnhanceResnet', ('audio', 4000, 800), channel_counts=[16, 16, 32], dense_count=1,
        dense_nodes=64),
    _sb('MetricGAN-discriminator', 'MetricGAN', 'MetricDiscriminator', ('spec2', 64, 64)),
]

def _yolo(name, inputs=('image', 3, 128)): return {'id': f'yolo/{name}', 'lib': 'ultralytics', 'yaml': f'{name}.yaml', 'inputs': inputs}
ULTRALYTICS = [_yolo(n) for n in ['yolov3-tinyu', 'yolov5n', 'yolov6n', 'yolov8n', 'yolov8n-seg', 'yolov8n-pose', 'yolov8n-obb',
                                  'yolov8n-ghost', 'yolov9t', 'yolov10n', 'yolo11n', 'yolo11n-seg', 'yolo11n-pose', 'yolo11n-obb',
                                  'yolo12n', 'yolo26n', 'rtdetr-l']] \
             + [_yolo(n, ('image', 3, 64)) for n in ['yolov8n-cls', 'yolo11n-cls']]

FASTAI = [{'id': f'fastai/{n}', 'lib': 'fastai', 'what': w, 'arch': a, 'inputs': i} for n, w, a, i in [
    ('unet-resnet18', 'unet', 'resnet18', ('image', 3, 64)), ('unet-resnet34', 'unet', 'resnet34', ('image', 3, 64)),
    ('unet-xresnet34', 'unet', 'xresnet34', ('image', 3, 64)), ('vision-resnet18', 'vision', 'resnet18', ('image', 3, 64)),
    ('vision-xresnet50', 'vision', 'xresnet50', ('image', 3, 64)), ('tabular', 'tabular', '', ('tabular', 3, 4))]]

SPECS = HF + SMP + MONAI + SPEECHBRAIN + ULTRALYTICS + FASTAI

# ---------------------------------------------------------------- building

def _hf_build(spec):
    import transformers
    cls = getattr(transformers, spec['cls'])
    kw = dict(spec['config'])
    for key in ('backbone_config', 'text_config', 'vision_config', 'decoder_config'):   # sub-configs given as dicts: built by their model type
        if isinstance(kw.get(key), dict):
            sub = dict(kw[key]); kw[key] = transformers.AutoConfig.for_model(sub.pop('model_type'), **sub)
    config = cls.config_class(**kw)
    return cls(config)

def _smp_build(spec):
    import segmentation_models_pytorch as smp
    return smp.create_model(spec['arch'], encoder_name=spec['encoder'], encoder_weights=None, classes=2)

def _monai_build(spec):
    import monai.networks.nets as nets
    return getattr(nets, spec['cls'])(**spec['kw'])

def _sb_build(spec):
    mod = importlib.import_module(f"speechbrain.lobes.models.{spec['module']}")
    return getattr(mod, spec['cls'])(**spec['kw'])

def _yolo_build(spec):
    from ultralytics import RTDETR, YOLO
    return (RTDETR if spec['yaml'].startswith('rtdetr') else YOLO)(spec['yaml']).model

def _fastai_build(spec):
    if spec['what'] == 'tabular':
        from fastai.tabular.model import TabularModel
        return TabularModel(emb_szs=[(10, 4), (5, 3), (7, 4)], n_cont=4, out_sz=2, layers=[32, 16])
    from fastai.vision.learner import create_unet_model, create_vision_model
    from fastai.vision import models
    arch = getattr(models.xresnet if spec['arch'].startswith('x') else models, spec['arch'])
    if spec['what'] == 'unet': return create_unet_model(arch, n_out=2, img_size=(64, 64), pretrained=False)
    return create_vision_model(arch, n_out=10, pretrained=False)

BUILDERS = {'transformers': _hf_build, 'smp': _smp_build, 'monai': _monai_build, 'speechbrain': _sb_build,
            'ultralytics': _yolo_build, 'fastai': _fastai_build}

@torch.no_grad()
def randomize_stats(model: nn.Module, seed: int=SEED) -> nn.Module:
    "`randomize_bn`, then the same for every module with running statistics it left untouched (classes fasterbn does not know)."
    fresh = {id(m) for m in model.modules() if holds_stats(m) and not m.running_mean.any() and bool((m.running_var == 1).all())}
    randomize_bn(model, seed)
    g = torch.Generator().manual_seed(seed + 7)
    for m in model.modules():
        if id(m) not in fresh or m.running_mean.any(): continue   # randomize_bn gave it statistics
        c, like = m.running_mean.numel(), m.running_mean
        m.running_mean.copy_(torch.randn(c, generator=g).to(like) * .5)
        m.running_var.copy_((torch.rand(c, generator=g) * 1.5 + .25).to(like))
        for name, scale, shift in (('weight', .5, 1.), ('bias', .5, 0.)):
            t = getattr(m, name, None)
            if isinstance(t, torch.Tensor) and t.numel() == c: t.copy_(torch.randn(c, generator=g).to(t) * scale + shift)
    return model

def build(spec, dtype=torch.float32) -> nn.Module:
    "The model with random weights (seeded) and trained-looking BatchNorm statistics, in eval mode, in `dtype`."
    torch.manual_seed(SEED)
    model = BUILDERS[spec['lib']](spec)
    return randomize_stats(model).eval().to(dtype)

def make_inputs(spec, batch: int, grow: int, dtype=torch.float32) -> tuple:
    "Positional inputs of `batch` samples; `grow` steps larger in space or time than the example (0: the example's size)."
    g = torch.Generator().manual_seed(SEED + 100 * batch + grow)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    kind, *a = spec['inputs']
    if kind == 'image':   # (channels, size, step)
        c, s, step = (*a, 32)[:3]; s += step * grow
        return (rand(batch, c, s, s),)
    if kind == 'volume':
        c, s, step = a; s += step * grow
        return (rand(batch, c, s, s, s),)
    if kind == 'pair':   # two images per sample (keypoint matching)
        c, s = a; s += 32 * grow
        return (rand(batch, 2, c, s, s),)
    if kind == 'audio':   # raw waveform (batch, samples)
        t, step = a
        return (rand(batch, t + step * grow),)
    if kind == 'seq':   # features (batch, time, features)
        t, f = a
        return (rand(batch, t + 16 * grow, f),)
    if kind == 'mel':   # (batch, 1, time, mel bins)
        t, f, step = a
        return (rand(batch, 1, t + step * grow, f),)
    if kind == 'spec2':   # two spectrograms stacked as channels
        t, f = a
        return (rand(batch, 2, t + 16 * grow, f),)
    if kind == 'series':   # (batch, context length, channels): the context length is fixed by the config
        t, c = a
        return (rand(batch, t, c),)
    if kind == 'tokens':
        n, vocab = a
        return (torch.randint(1, vocab, (batch, n + 4 * grow), generator=g),)
    if kind == 'image+tokens':
        c, s, n, vocab = a; s += 32 * grow
        return (rand(batch, c, s, s), torch.randint(1, vocab, (batch, n), generator=g))
    if kind == 'tokens+image':   # (input_ids, pixel_values): CLIP-style models
        n, vocab, c, s = a; s += 32 * grow
        return (torch.randint(3, vocab, (batch, n), generator=g), rand(batch, c, s, s))
    if kind == 'tabular':   # fastai's TabularModel(x_cat, x_cont)
        n_cat, n_cont = a
        cat = torch.stack([torch.randint(0, k, (batch,), generator=g) for k in (10, 5, 7)[:n_cat]], 1)
        return (cat, rand(batch, n_cont))
    raise ValueError(f'unknown input kind {kind!r}')

OTHER = ((3, 1), (3, 2), (3, 0))   # (batch, grow) candidates for the second shape, first that the unfolded model runs

def _cast(x: tuple, dtype) -> tuple: return tuple(t.to(dtype) if t.is_floating_point() else t for t in x)

# ---------------------------------------------------------------- one model

@torch.no_grad()
def run(model, x):
    "One forward, seeded: some models draw random numbers in eval too (speechbrain's StatisticsPooling adds Gaussian noise to its mean)."
    torch.manual_seed(SEED)
    return model(*x)

def bn_modules(model: nn.Module) -> dict:
    "id -> every name of each module holding running statistics (a module registered twice has two names)."
    found = defaultdict(list)
    for name, m in model.named_modules(remove_duplicate=False):
        if holds_stats(m): found[id(m)].append(name)
    return dict(found)

def summary(folder, bns: dict, model: nn.Module) -> dict:
    "What one fold did: folded, rows, BatchNorms with no row, and each one not folded with its kind and surroundings."
    rep = folder.report
    named = {r.bn for r in rep.rows}
    missing = [names[0] for names in bns.values() if not named & set(names)]
    return {'folded': rep.n_folded, 'rows': len(rep), 'missing': missing,
            'untraceable': {n: f'{_class_of(model, n)}: {e}'[:200] for n, e in list(rep.untraceable.items())[:8]},
            'not_folded': [{'bn': r.bn, 'kind': row_kind(r), 'pattern': _pattern(r, model), 'reason': r.reason} for r in rep.not_folded]}

def _class_of(model: nn.Module, name: str) -> str:
    try: return type(model if name in ('', '<model>') else model.get_submodule(name)).__name__
    except AttributeError: return '?'

def _pattern(row, model) -> str:
    "The surroundings of a BatchNorm not folded; for an untraceable one, the class of the module fx could not enter."
    found = re.search(r'are in `([^`]*)`, which torch.fx could not trace', row.reason)
    return f'untraceable({_class_of(model, found.group(1))})' if found else pattern(row.reason)

def count_bns(model: nn.Module) -> int: return sum(holds_stats(m) for m in {id(m): m for m in model.modules()}.values())

def from_fasterbn(e: BaseException) -> bool:
    "Whether an exception was raised by fasterbn's own code (a guard a folded model runs), not by the model's."
    if type(e).__module__.startswith('fasterbn'): return True
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(FASTERBN_DIR)

def check64(spec, x, xo, with_inputs: bool, dtype=torch.float64) -> dict:
    """Rebuild in `dtype`, fold in place (with or without the example), and compare with the unfolded model on the example and on
    `xo`. float64 gives the verdict; float32 (for models that cannot run in float64) only the errors."""
    model = build(spec, dtype)
    xd, xod = _cast(x, dtype), _cast(xo, dtype) if xo is not None else None
    ref, ref_o = run(model, xd), run(model, xod) if xod is not None else None
    folder = BN_Folder(check=False)   # this pass measures exactness itself
    folder.fold(model, inplace=True, example_inputs=xd if with_inputs else None)
    res = {'folded': folder.report.n_folded, 'err': rel_error(run(model, xd), ref)}
    if xod is not None:
        try: res['err_other'] = rel_error(run(model, xod), ref_o)
        except Exception as e:
            if from_fasterbn(e): res['guarded'] = first_line(e)
            else: res['err_other'], res['other_error'] = math.inf, first_line(e)
    if dtype != torch.float64: return {**res, 'dtype': 'float32', 'exact': None}   # float32 rounding is ~1e-7: no verdict
    res['exact'] = max(res['err'], res.get('err_other', 0.)) <= TOL
    if not res['exact']:   # the model's own float64 noise floor: one rounding of every weight of the unfolded model
        res['noise'] = rel_error(run(perturbed(build(spec, torch.float64)), xd), ref)
    return res

def own_fuser(spec, model, bns) -> dict|None:
    "The library's own Conv+BN fuser, where it has one: BatchNorms left afterwards, and its float64 error on the example."
    if spec['lib'] != 'ultralytics': return None
    fused = copy.deepcopy(model).fuse(verbose=False)
    return {'folded': len(bns) - count_bns(fused)}

def own_fuser64(spec, x) -> float:
    "The float64 error of the library's own fuser on the example, on the predictions (ultralytics' fuse drops YOLOv10's one-to-many branch)."
    model = build(spec, torch.float64)
    x64 = _cast(x, torch.float64)
    first = lambda out: out[0] if isinstance(out, (tuple, list)) else out
    ref = first(run(model, x64))
    return rel_error(first(run(model.fuse(verbose=False), x64)), ref)

def measure(spec) -> dict:
    "Everything the sweep records about one model."
    rec, stage, t_start = {k: spec[k] for k in ('id', 'lib')}, 'build', time.perf_counter()
    torch.set_default_dtype(torch.float32)
    try:
        model = build(spec)
        rec['params'] = sum(p.numel() for p in model.parameters())
        bns = bn_modules(model)
        rec['bn'] = len(bns)
        rec['bn_classes'] = dict(Counter(type(m).__name__ for m in {id(m): m for m in model.modules() if holds_stats(m)}.values()))
        rec['aliased_bns'] = sum(len(v) > 1 for v in bns.values())
        if not bns: return {**rec, 'status': 'no-bn'}
        stage = 'input'
        x = make_inputs(spec, 2, 0)
        run(model, x)
        rec['input'] = ', '.join(map(shape_of, x))
        xo, last = None, None
        for b, k in OTHER:
            cand = make_inputs(spec, b, k)
            try: run(model, cand); xo = cand; break
            except Exception as e: last = e
        rec['input_other'] = ', '.join(map(shape_of, xo)) if xo is not None else None
        if xo is None: rec['other_error'] = first_line(last)

        stage = 'fold'   # 1. fasterbn with the example, float32
        folder = BN_Folder()
        t0 = time.perf_counter(); folder.fold(model, example_inputs=x); rec['fold_s'] = round(time.perf_counter() - t0, 3)
        rec.update(summary(folder, bns, model), notes=folder.report.notes)
        stage = 'fold-no-inputs'   # 2. without
        folder = BN_Folder()
        t0 = time.perf_counter(); folder.fold(model); rec['fold_s_noinputs'] = round(time.perf_counter() - t0, 3)
        rec['noinputs'] = summary(folder, bns, model)
        del folder

        stage = 'fuse'   # 3. fx fuse and the library's own fuser
        rec['fuse_folded'], fused, rec['fuse_error'] = fx_fuse(model, {n for names in bns.values() for n in names})
        del fused
        stage = 'own-fuser'
        rec['own'] = own_fuser(spec, model, bns)
        del model

        stage = 'check64'   # 4. float64 exactness, with and without example inputs
        torch.set_default_dtype(torch.float64)   # for tensors a forward creates itself
        try: rec['check'] = check64(spec, x, xo, True)
        except Exception as e:
            if is_oom(e) or _runs64(spec, x): stage = 'check64' if is_oom(e) else 'check64-fold'; raise
            rec['float64_error'] = first_line(e)   # the unfolded model cannot run in float64: check in float32, without a verdict
            torch.set_default_dtype(torch.float32)
            rec['check'] = check64(spec, x, xo, True, torch.float32)
        stage = 'check64-no-inputs'
        rec['check_noinputs'] = check64(spec, x, xo, False, torch.get_default_dtype())
        if rec['own'] is not None:
            stage = 'own-fuser64'
            rec['own']['err'] = own_fuser64(spec, x)
        rec['status'] = 'ok'
    except Exception as e:
        status = 'oom' if is_oom(e) else 'crash' if stage.startswith(('fold', 'check64-')) else 'error'
        rec.update(status=status, stage=stage, error=first_line(e))
        if status == 'crash': rec['where'] = _where(e)
    finally: torch.set_default_dtype(torch.float32)
    rec['wall_s'] = round(time.perf_counter() - t_start, 1)
    return rec

def _runs64(spec, x) -> bool:
    "Whether the unfolded model runs in float64 at all (some cast inputs or buffers to float32 themselves)."
    try: run(build(spec, torch.float64), _cast(x, torch.float64)); return True
    except Exception: return False

def _where(e: BaseException) -> str:
    "The innermost frame of fasterbn's code in the traceback: file:line function."
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(FASTERBN_DIR)]
    f = frames[-1] if frames else (traceback.extract_tb(e.__traceback__) or [None])[-1]
    return f'{Path(f.filename).name}:{f.lineno} {f.name}' if f else ''

# ---------------------------------------------------------------- the run

WARM = {'transformers': ['transformers.modeling_utils', 'transformers.models.auto.modeling_auto', 'timm'],
        'smp': ['segmentation_models_pytorch'], 'monai': ['monai.networks.nets'], 'speechbrain': ['speechbrain.lobes.models.ECAPA_TDNN'],
        'ultralytics': ['ultralytics', 'ultralytics.nn.tasks'], 'fastai': ['fastai.vision.learner', 'fastai.tabular.model']}

def warm(lib: str):
    "Import what every model of `lib` needs, in the parent: the forked workers inherit it instead of importing it each (seconds a model)."
    for mod in WARM[lib]: importlib.import_module(mod)

def available(lib: str) -> bool: return importlib.util.find_spec(LIBS[lib]) is not None

def select(args) -> list[dict]:
    specs = [s for s in SPECS if not args.lib or s['lib'] in args.lib]
    pats = args.models or (QUICK if args.quick else None)
    if pats: specs = [s for s in specs if any(fnmatch.fnmatchcase(s['id'], p) or fnmatch.fnmatchcase(s['id'].split('/', 1)[1], p) for p in pats)]
    return specs[:args.limit] if args.limit else specs

def versions() -> dict:
    out = {'torch': torch.__version__, 'Python': platform.python_version()}
    for lib, mod in {**LIBS, 'timm': 'timm', 'torchvision': 'torchvision', 'torchaudio': 'torchaudio'}.items():
        try: out[mod] = importlib.import_module(mod).__version__
        except Exception: out[mod] = None
    return out

def run_info(args) -> dict:
    v = versions()
    return {'command': 'python tools/eco_zoo.py ' + ' '.join(sys.argv[1:]),
            'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
            'machine': f'{platform.processor() or platform.machine()}, nproc = {os.cpu_count()}, 1 torch thread per worker, {args.jobs} workers',
            'versions': ', '.join(f'{k} {x}' for k, x in v.items() if x), 'missing_libs': [l for l in LIBS if not available(l)],
            'timeout_s': args.timeout, 'load_start': os.getloadavg()[0]}

def line(r) -> str:
    if r['status'] != 'ok': return f"{r['id']}: {r['status']} {r.get('stage', '')} {r.get('error', '')}"
    c, cn = r.get('check') or {}, r.get('check_noinputs') or {}
    bad = '  INEXACT' if c.get('exact') is False or cn.get('exact') is False else ''
    guard = '  guarded' if c.get('guarded') or cn.get('guarded') else ''
    miss = f", {len(r['missing'])} without a row" if r['missing'] else ''
    own = f", own {r['own']['folded']}" if r.get('own') else ''
    return (f"{r['id']}: {r['folded']}/{r['bn']} with inputs, {r['noinputs']['folded']} without (fuse {r['fuse_folded']}{own}){miss}, "
            f"err {fmt_err(c.get('err'))}/{fmt_err(c.get('err_other'))}, fold {r['fold_s']:.1f}s{bad}{guard}")

def run_models(specs, args, jsonl: Path) -> list[dict]:
    recs, t0 = [], time.monotonic()
    todo = [s for s in specs if available(s['lib'])]
    with jsonl.open('w') as f:
        f.write(json.dumps({'run': {**run_info(args), 'ids': [s['id'] for s in specs]}}) + '\n')
        for s in specs:
            if s not in todo:
                rec = {'id': s['id'], 'lib': s['lib'], 'status': 'skipped', 'error': f"{LIBS[s['lib']]} is not installed"}
                recs.append(rec); f.write(json.dumps(rec) + '\n')
        for i, ((_, spec), res) in enumerate(run_pool([(measure, s) for s in todo], args.jobs, args.timeout, args.memory), 1):
            rec = res.get('value') or {'id': spec['id'], 'lib': spec['lib'],
                                       'status': next(k for k in ('timeout', 'died', 'error') if k in res), 'error': next(iter(res.values()))}
            if rec['status'] == 'error' and 'stage' not in rec: rec['status'] = 'died'   # the worker itself failed
            recs.append(rec); f.write(json.dumps(rec) + '\n'); f.flush()
            print(f'[{i}/{len(todo)} {time.monotonic() - t0:5.0f}s] {line(rec)}', flush=True)
    return recs

def update(jsonl: Path, recs: list[dict], info: dict):
    "Replace the records of `recs`' models in a full sweep's jsonl (new ones go at the end), and say so in its run line."
    lines = [json.loads(l) for l in jsonl.read_text().splitlines() if l.strip()]
    new = {r['id']: r for r in recs}
    head, old = lines[0], lines[1:]
    kept = [new.pop(r['id'], r) for r in old] + list(new.values())
    head['run'].setdefault('notes', []).append(f"{info['date']}: {len(recs)} model(s) run again and replaced with `{info['command']}`: "
                                               + ', '.join(r['id'] for r in recs))
    jsonl.write_text('\n'.join(json.dumps(l) for l in [head] + kept) + '\n')

# ---------------------------------------------------------------- report

LIB_NAMES = {'transformers': 'transformers', 'smp': 'smp', 'monai': 'MONAI (3-D)', 'speechbrain': 'speechbrain (1-D)',
             'ultralytics': 'ultralytics', 'fastai': 'fastai'}   # smp: segmentation_models_pytorch

def _inexact(r) -> bool: return any((r.get(k) or {}).get('exact') is False for k in ('check', 'check_noinputs'))
def _guarded(r) -> bool: return any((r.get(k) or {}).get('guarded') for k in ('check', 'check_noinputs'))

def summary_rows(name, rs, all_rs) -> tuple[str, str]:
    "One library's line in the summary table and in the problems table."
    ok = [r for r in rs if r['status'] == 'ok']
    n = sum(r['bn'] for r in ok)
    fw, fn, fu = (sum(f(r) for r in ok) for f in (lambda r: r['folded'], lambda r: r['noinputs']['folded'], lambda r: r['fuse_folded']))
    own = [r for r in ok if r.get('own')]
    own_s = f"{sum(r['own']['folded'] for r in own)} / {sum(r['bn'] for r in own)}" if own else '–'
    fails = Counter(r['status'] for r in all_rs if r['status'] not in ('ok', 'no-bn'))
    return (f"| {name} | {len(ok)} | {n} | {fw} ({pct(fw, n)}) | {fn} ({pct(fn, n)}) | {fu} ({pct(fu, n)}) | {own_s} |",
            f"| {name} | {sum(_inexact(r) for r in ok)} | {sum(_guarded(r) for r in ok)} | {sum(len(r['missing']) for r in ok)} | "
            f"{sum(bool(r['missing']) for r in ok)} | {fails.pop('crash', 0)} | {', '.join(f'{v} {k}' for k, v in sorted(fails.items())) or 0} |")

def kinds_table(ok, key) -> list[str]:
    kinds, models, example, pats = Counter(), defaultdict(set), {}, defaultdict(Counter)
    for r in ok:
        for nf in (r[key]['not_folded'] if key else r['not_folded']):
            k = nf['kind']; kinds[k] += 1; models[k].add(r['id']); pats[k][nf.get('pattern', '')] += 1
            if k not in example or r['bn'] < example[k][2]: example[k] = (r['id'], nf, r['bn'])   # the smallest model shows it
    out = ['| kind | BatchNorms | models | commonest surroundings | example (smallest model) |', '|---|---:|---:|---|---|']
    for k, n in kinds.most_common():
        m, nf, _ = example[k]
        common = '; '.join(f'`{p}` {c}' for p, c in pats[k].most_common(3))
        out.append(f"| {k} | {n} | {len(models[k])} | {common} | `{m}` `{nf['bn']}`: {md(clip(nf['reason'], 200))} |")
    return out

def render(jsonl: Path) -> str:
    lines = [json.loads(l) for l in jsonl.read_text().splitlines() if l.strip()]
    run = next((l['run'] for l in lines if 'run' in l), {})
    recs = [l for l in lines if 'id' in l]
    ok = [r for r in recs if r['status'] == 'ok']
    out = ['# BatchNorm folding beyond timm and torchvision', '']
    out += [f'- {k}: ' + (f'`{run[k]}`' if k == 'command' else str(run[k])) for k in ('command', 'date', 'machine', 'versions') if k in run]
    out += [f'- {n}' for n in run.get('notes', [])]
    if run.get('missing_libs'): out.append(f"- not installed, skipped: {', '.join(run['missing_libs'])}")
    if 'wall_s' in run:
        out.append(f"- run time {run['wall_s'] / 60:.0f} min; 1-minute load average {run['load_start']:.1f} at the start, "
                   f"{run['load_end']:.1f} at the end (2 = both cores busy)")
    libs = [l for l in LIB_NAMES if any(r['lib'] == l for r in recs)]
    rows = [summary_rows(LIB_NAMES[l], [r for r in ok if r['lib'] == l], [r for r in recs if r['lib'] == l]) for l in libs]
    rows.append(summary_rows('**all**', ok, recs))
    out += ['', '## Summary', '', '| library | models | BatchNorms | folded with inputs | without inputs | fx `fuse` | own fuser |',
            '|---|---:|---:|---:|---:|---:|---:|'] + [a for a, _ in rows]
    out += ['', '| library | inexact | guarded | missing rows | models missing rows | crashes | other failures |',
            '|---|---:|---:|---:|---:|---:|---|'] + [b for _, b in rows]
    nobn = [r['id'] for r in recs if r['status'] == 'no-bn']
    out += ['', 'transformers: Hugging Face transformers; smp: segmentation_models_pytorch. '
            'Models: those that ran to the end, with a BatchNorm' + (f" ({len(nobn)} more had none: {', '.join(nobn)})" if nobn else '')
            + '. BatchNorms: modules holding `running_mean` and `running_var`, whatever their class. With inputs: `BN_Folder().fold(model, '
            'example_inputs=x)` with the model\'s declared input at batch 2; without: `BN_Folder().fold(model)`. fx `fuse`: '
            '`torch.fx.experimental.optimization.fuse` (0 where fx cannot trace the model). Own fuser: the library\'s own '
            '(ultralytics `model.fuse()`), folded / BatchNorms of the models that have one. Inexact: a model where a float64 fold, '
            'with or without inputs, moved an output by more than 1e-9 (relative) on the example or on another batch and size. '
            'Guarded: the folded model refused the other size with an error of fasterbn\'s. Missing rows: BatchNorms with no row '
            'in `folder.report`.']
    bad = [r for r in recs if r['status'] not in ('ok', 'no-bn')]
    findings = []
    for r in ok:
        for key, label in (('check', 'with inputs'), ('check_noinputs', 'without inputs')):
            c = r.get(key) or {}
            if c.get('exact') is False:
                findings.append(f"- **inexact** ({label}): `{r['id']}` error {fmt_err(c['err'])} on the example, "
                                f"{fmt_err(c.get('err_other'))} on {r.get('input_other')}" + (f" ({c['other_error']})" if c.get('other_error') else '')
                                + (f"; one rounding of every weight moves the unfolded output by {fmt_err(c['noise'])}" if 'noise' in c else ''))
            if c.get('guarded'): findings.append(f"- guarded ({label}): `{r['id']}` on {r.get('input_other')}: {md(c['guarded'])}")
        if r.get('float64_error'): findings.append(f"- checked in float32 only, without a verdict (the unfolded model fails in float64: "
                                                   f"{md(r['float64_error'])}): `{r['id']}` error {fmt_err((r.get('check') or {}).get('err'))}")
        if (r.get('own') or {}).get('err', 0) > TOL: findings.append(f"- the library's own fuser is inexact on `{r['id']}`: {fmt_err(r['own']['err'])}")
        if r['fuse_folded'] > r['folded']: findings.append(f"- fx `fuse` folds more: `{r['id']}` {r['fuse_folded']} vs {r['folded']}")
        if r.get('input_other') is None: findings.append(f"- no second input shape runs on `{r['id']}`: {r.get('other_error')}")
    findings += [f"- {r['status']}: `{r['id']}`" + (f" at {r['stage']}" if r.get('stage') else '') + f": {md(r.get('error', ''))}"
                 + (f" ({r['where']})" if r.get('where') else '') for r in bad]
    if findings: out += ['', '## Findings', ''] + findings
    nb = sum(r['bn'] for r in ok)
    out += ['', '## Not folded with example inputs, by kind', '', f"{nb - sum(r['folded'] for r in ok)} of {nb} BatchNorms.", '']
    out += kinds_table(ok, None)
    out += ['', '## Not folded without example inputs, by kind', '', f"{nb - sum(r['noinputs']['folded'] for r in ok)} of {nb} BatchNorms.", '']
    out += kinds_table(ok, 'noinputs')
    miss = [(r['id'], r['missing'], r['bn_classes']) for r in ok if r['missing']]
    if miss:
        out += ['', '## BatchNorms with no row in the report', '', '| model | missing | BatchNorm classes in the model | first missing |', '|---|---:|---|---|']
        out += [f"| {i} | {len(m)} | {', '.join(f'{k} {v}' for k, v in c.items())} | `{m[0]}` |" for i, m, c in miss]
    out += ['', '## Per model', '', '| model | BN | with inputs | without | fx `fuse` | own | float64 error | missing | fold s |',
            '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in recs:   # parameters, input shapes, reasons and both errors of each fold are in the .jsonl
        if r['status'] == 'no-bn': continue
        if r['status'] != 'ok':
            out.append(f"| {r['id']} | {r.get('bn', '')} | | | | | {r['status']}: {md(clip(r.get('error', ''), 100))} | | |"); continue
        checks = [d for d in (r.get('check'), r.get('check_noinputs')) if d]
        worst = max((v for d in checks for v in (d.get('err'), d.get('err_other')) if isinstance(v, (int, float))), default=None)
        f32 = any(d.get('dtype') == 'float32' for d in checks)
        err = 'not checked' if not checks else fmt_err(worst) + (' (float32)' if f32 else ' **inexact**' if worst > TOL else '') \
              + (' (guarded)' if any(d.get('guarded') for d in checks) else '')
        own = r['own']['folded'] if r.get('own') else ''
        out.append(f"| {r['id']} | {r['bn']} | {r['folded']} | {r['noinputs']['folded']} | {r['fuse_folded']}{' ✗' if r['fuse_error'] else ''} | "
                   f"{own} | {err} | {len(r['missing']) or ''} | {r['fold_s']:.1f} |")
    out += ['', 'BN: BatchNorms in the model; with inputs / without / fx `fuse` / own: how many each folded (✗: fx could not trace the model). '
            'Float64 error: the largest of max|folded − unfolded| / max|unfolded| over the folds with and without inputs, each on the '
            'example and on another batch and size (guarded: the folded model refused the other size with an error of its own). '
            'Missing: BatchNorms with no row in the report. Fold s: the float32 fold with inputs.']
    return '\n'.join(out) + '\n'

# ---------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--lib', nargs='+', choices=list(LIBS), help='only these libraries')
    ap.add_argument('--models', nargs='+', metavar='PATTERN', help='only these model ids (fnmatch patterns, e.g. `hf/detr*` or `yolo*`)')
    ap.add_argument('--quick', action='store_true', help=f'a few representative models: {", ".join(QUICK)}')
    ap.add_argument('--limit', type=int, help='only the first N models')
    ap.add_argument('--jobs', type=int, default=2, help='models run at once, one process each (default 2)')
    ap.add_argument('--timeout', type=float, default=300, help='seconds per model (default 300)')
    ap.add_argument('--memory', type=float, default=8, help='GiB of address space per worker beyond its imports (default 8; 0: no limit)')
    ap.add_argument('--out', type=Path, default=ROOT / 'bench', help='output folder (default bench/)')
    ap.add_argument('--list', action='store_true', help='print the selected model ids and exit')
    ap.add_argument('--update', action='store_true', help="run the selected models and replace their lines in the full sweep's "
                    'eco_zoo.jsonl (its run line notes it), then rewrite eco_zoo.md')
    ap.add_argument('--render', action='store_true', help='only rewrite eco_zoo.md from eco_zoo.jsonl (eco_zoo-partial.* with a subset)')
    args = ap.parse_args(argv)
    specs = select(args)
    if args.list:
        for s in specs: print(s['id'] + ('' if available(s['lib']) else f"  ({LIBS[s['lib']]} not installed)"))
        return 0
    partial = bool(args.quick or args.models or args.limit or args.lib) and not args.update
    stem = args.out / ('eco_zoo-partial' if partial else 'eco_zoo')
    if args.render:
        if not stem.with_suffix('.jsonl').exists(): sys.exit(f'no {stem.with_suffix(".jsonl")}: run the sweep first')
        stem.with_suffix('.md').write_text(render(stem.with_suffix('.jsonl'))); return 0
    if not specs: sys.exit('no model matches')
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for lib in {s['lib'] for s in specs}:   # import each library once here: every forked worker inherits it
        if available(lib): warm(lib)
    print(f"{len(specs)} models; not installed: {', '.join(l for l in LIBS if not available(l)) or 'none'}", flush=True)
    jsonl = stem.with_suffix('.jsonl')
    if args.update:
        if not jsonl.exists(): sys.exit(f'no {jsonl} to update: run the full sweep first')
        recs = run_models(specs, args, args.out / 'eco_zoo-partial.jsonl')
        update(jsonl, recs, run_info(args))
    else:
        run_models(specs, args, jsonl)
        lines = jsonl.read_text().splitlines()   # the run's wall time and end load go into its first line
        info = json.loads(lines[0]); info['run'].update(wall_s=round(time.monotonic() - t0), load_end=os.getloadavg()[0])
        jsonl.write_text('\n'.join([json.dumps(info)] + lines[1:]) + '\n')
    stem.with_suffix('.md').write_text(render(jsonl))
    print(f'wrote {jsonl} and {stem.with_suffix(".md")}')
    return 0

if __name__ == '__main__': sys.exit(main())
